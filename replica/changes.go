package replica

import (
	"maps"
	"slices"

	"github.com/gecholog/broker/broker"
)

// A replica tells its whole counts at its heartbeat and when asked; in
// between, a JSON word told for anything else (a failure, a change taken
// from the bucket) names only the routers whose counts changed since its
// last JSON word (StatsMessage.Changed). With a thousand routers counted,
// each such word was 100 KB of JSON that every replica decoded on every
// failure, and a failure took 20 ms at p99 to reach the last replica
// (broker-bench -mode propagation); now it costs the routers that changed.

// changes is what a replica's words told since its last JSON word: the
// counts that word told, and every router whose counts differed from them
// in any word since, binary ones too. A word of changes names those
// routers, each with its counts now (none at all: no longer counted).
// The JSON words go straight to every replica on one subject, so each
// hears them in order; a binary word (all its counts) may come late
// through the relay and be dropped as overtaken (broker.MergeTold), and
// what it changed is in the next word of changes all the same. A replica
// that missed a JSON word is wrong until the next whole one.
type changes struct {
	base  map[string]broker.Counts
	dirty map[string]bool
}

// told starts again from counts, just told in a JSON word.
func (c *changes) told(counts []broker.Counts) {
	c.base = make(map[string]broker.Counts, len(counts))
	for _, x := range counts {
		c.base[x.Router] = x
	}
	clear(c.dirty)
}

// note marks the routers whose counts, about to be told, differ from the
// last JSON word's.
func (c *changes) note(counts []broker.Counts) {
	if c.dirty == nil {
		c.dirty = map[string]bool{}
	}
	kept := 0
	for _, x := range counts {
		b, ok := c.base[x.Router]
		if ok {
			kept++
		}
		if !ok || !b.Equal(x) {
			c.dirty[x.Router] = true
		}
	}
	if kept == len(c.base) {
		return
	}
	counted := make(map[string]bool, len(counts))
	for _, x := range counts {
		counted[x.Router] = true
	}
	for r := range c.base {
		if !counted[r] {
			c.dirty[r] = true
		}
	}
}

// since is what a word of changes tells after note(counts): each router
// changed since the last JSON word with its counts now, in counts'
// order, then those no longer counted, with none, in path order.
func (c *changes) since(counts []broker.Counts) []broker.Counts {
	var out []broker.Counts
	told := 0
	for _, x := range counts {
		if c.dirty[x.Router] {
			out = append(out, x)
			told++
		}
	}
	if told == len(c.dirty) {
		return out
	}
	counted := make(map[string]bool, len(counts))
	for _, x := range counts {
		counted[x.Router] = true
	}
	for _, r := range slices.Sorted(maps.Keys(c.dirty)) {
		if !counted[r] {
			out = append(out, broker.Counts{Router: r})
		}
	}
	return out
}
