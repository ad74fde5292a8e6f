package broker

import (
	"slices"
	"time"
)

// Merging what the other replicas tell: their words, each replacing what
// the same replica told before, bounded, and kept until it falls silent.

// maxPeers bounds the replicas whose counts are kept at once. A fleet is a
// few dozen; anyone may publish on the stats subject, and a flood of
// forged replica names then costs bounded memory until they fall silent.
const maxPeers = 1024

// Merge takes the counts replica from told at, replacing what it told
// before; they stand for PeerSilence. This replica's own are ignored.
func (b *Broker) Merge(from string, at time.Time, counts []Counts) {
	b.MergeEvery(from, at, 0, counts)
}

// MergeEvery is Merge of a replica that tells a heartbeat every every:
// its counts stand for Silence(every).
func (b *Broker) MergeEvery(from string, at time.Time, every time.Duration, counts []Counts) {
	b.MergeTold(from, time.Time{}, at, every, counts)
}

// overtaken is how far before the last word heard from a replica, by its
// own clock, a word of it may have been told and still be dropped as
// overtaken: its words reach the others on two paths (straight and through
// a relay), a few milliseconds apart. A word further back is a replica that
// restarted with its clock set back (or the last was forged ahead), and is
// taken.
const overtaken = time.Second

// MergeTold is MergeEvery of counts the replica told at told by its own
// clock (zero: not said): a word told before the last one taken from it,
// by less than overtaken, came late by another path and is dropped
// (false).
func (b *Broker) MergeTold(from string, told, at time.Time, every time.Duration, counts []Counts) bool {
	return b.merge(from, told, at, every, counts, false)
}

// MergeChanged is MergeTold of a word that names only the routers whose
// counts changed since the replica's word before it (of those that say
// more than counts; see the replica package): the others' stand, and a
// router told with no counts at all is forgotten.
func (b *Broker) MergeChanged(from string, told, at time.Time, every time.Duration, counts []Counts) bool {
	return b.merge(from, told, at, every, counts, true)
}

func (b *Broker) merge(from string, told, at time.Time, every time.Duration, counts []Counts, changed bool) bool {
	if from == b.id {
		return false
	}
	t := b.cur()
	b.fleet.mu.Lock()
	defer b.fleet.mu.Unlock()
	p, known := b.fleet.peers[from]
	if !known && len(b.fleet.peers) >= maxPeers {
		return false
	}
	if known && !told.IsZero() && told.Before(p.told) && p.told.Sub(told) < overtaken {
		return false
	}
	if p.counts == nil {
		p.counts = make(map[string]Counts, len(counts))
	}
	// Its counts are updated in place: a word a few milliseconds after the
	// last names the same routers, and costs no allocation.
	kept := 0 // routers told before and now
	for _, c := range counts {
		rt := t.routers[c.Router]
		if rt == nil {
			continue
		}
		c = bounded(c, at)
		o, ok := p.counts[c.Router]
		if ok {
			kept++
		}
		if changed && c.Equal(Counts{Router: c.Router}) {
			if ok {
				delete(p.counts, c.Router)
				b.fleet.shift(rt.path, -o.Chosen, -o.Reported)
				b.setBase(rt)
				b.stir()
			}
			continue
		}
		p.counts[c.Router] = c
		// What least-busy reads takes the news at once, rather than at
		// the next Refresh: half the time two replicas' counts disagree.
		if !ok || o.Chosen != c.Chosen || o.Reported != c.Reported {
			b.fleet.shift(rt.path, c.Chosen-o.Chosen, c.Reported-o.Reported)
			b.setBase(rt)
		}
		if !ok || !o.Equal(c) {
			b.stir() // the fleet has calls: refresh at the tick, not the heartbeat
		}
	}
	if !changed && kept != len(p.counts) { // routers it no longer tells (or told twice)
		named := make(map[string]bool, len(counts))
		for _, c := range counts {
			if t.routers[c.Router] != nil {
				named[c.Router] = true
			}
		}
		for path, o := range p.counts {
			if named[path] {
				continue
			}
			delete(p.counts, path)
			b.fleet.shift(path, -o.Chosen, -o.Reported)
			if rt := t.routers[path]; rt != nil { // nil: removed by Reconfigure
				b.setBase(rt)
				b.stir()
			}
		}
	}
	p.at, p.told, p.silence = at, told, Silence(every)
	b.fleet.peers[from] = p
	return true
}

// Relay is the name that comes first of this replica's and those of the
// replicas it hears: the one the replica package makes the fleet's relay
// of counts in a large fleet.
func (b *Broker) Relay() string {
	b.fleet.mu.Lock()
	defer b.fleet.mu.Unlock()
	first := b.id
	for id := range b.fleet.peers {
		first = min(first, id)
	}
	return first
}

// Forget forgets what replica from told, at once: it said it stops. Its
// calls in flight are answered by then, and their reports come to the
// others.
func (b *Broker) Forget(from string) {
	b.fleet.mu.Lock()
	defer b.fleet.mu.Unlock()
	p, ok := b.fleet.peers[from]
	if !ok {
		return
	}
	b.fleet.drop(from)
	t := b.cur()
	for path := range p.counts {
		if rt := t.routers[path]; rt != nil {
			b.setBase(rt)
		}
	}
	b.stir()
}

// Peers is how many other replicas this replica heard from within their
// Silence, as of the last Refresh.
func (b *Broker) Peers() int {
	b.fleet.mu.Lock()
	defer b.fleet.mu.Unlock()
	return len(b.fleet.peers)
}

// What one replica tells is bounded, so that a forged or broken message on
// the stats subject changes the fleet's figures no more than a replica
// could, and only while its sender keeps telling (PeerSilence).
const (
	// maxTold bounds each count: a trillion calls, so that the counts of
	// a million replicas add up without overflowing.
	maxTold = 1 << 40
	// maxSkew is how far ahead of this replica's clock a time told may be.
	// A last success further ahead would hide every failure until then,
	// and a failure further ahead would outlast every success until then:
	// told, each would be told on by every replica, for ever.
	maxSkew = 10 * time.Second
)

// bounded is c, as told at, with its counts within 0 and maxTold and
// without times further than maxSkew ahead of at, nor more failures than
// MaxFailing.
func bounded(c Counts, at time.Time) Counts {
	count := func(n int64) int64 { return min(max(n, 0), maxTold) }
	c.Chosen, c.Reported, c.Calls, c.Failures = count(c.Chosen), count(c.Reported), count(c.Calls), count(c.Failures)
	c.Failures = min(c.Failures, c.Calls)
	latest := at.Add(maxSkew)
	if c.LastSuccess.After(latest) {
		c.LastSuccess = time.Time{}
	}
	if len(c.Failing) > MaxFailing {
		c.Failing = c.Failing[len(c.Failing)-MaxFailing:]
	}
	if slices.ContainsFunc(c.Failing, func(t time.Time) bool { return t.After(latest) }) {
		c.Failing = slices.DeleteFunc(slices.Clone(c.Failing), func(t time.Time) bool { return t.After(latest) })
	}
	return c
}
