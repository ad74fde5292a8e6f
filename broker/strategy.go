package broker

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"time"
)

// A Strategy chooses which of the enabled routers of a pool's best tier a
// call goes to. Pick runs on every call, on the request's path: it must not
// allocate, lock or wait, and reads the routers' statistics, which the
// replica keeps up to date in the background from the whole fleet's
// traffic. Adding a strategy is one type in one file, and a line in
// strategies.
type Strategy interface {
	// Pick returns the index in t of the router to call; t holds at least
	// two routers.
	Pick(t *Tier) int
}

// strategies are the strategies a pool can name, by name.
var strategies = map[string]Strategy{
	"random":     random{},
	"least-busy": leastBusy{},
	"latency":    lowestLatency{},
	"headroom":   mostHeadroom{},
}

// DefaultStrategy is what a pool that names none uses: weighted random, as
// the original broker chose.
const DefaultStrategy = "random"

// Strategies lists the names a pool may give, sorted.
func Strategies() []string {
	names := make([]string, 0, len(strategies))
	for n := range strategies {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// strategy returns the named strategy, or an error naming the known ones.
func strategy(name string) (Strategy, error) {
	if name == "" {
		name = DefaultStrategy
	}
	s, ok := strategies[name]
	if !ok {
		return nil, fmt.Errorf("strategy %q: %s", name, strings.Join(Strategies(), ", "))
	}
	return s, nil
}

// Tier is the enabled routers of one priority of a pool, as a strategy sees
// them: each router's weight and live statistics. It is immutable; the
// statistics behind it change as the fleet's calls do.
type Tier struct {
	routes  []*route
	weights []int
	cum     []int // cumulative weights, for Random
	index   []int // each router's index in the pool
}

// Len is the number of routers.
func (t *Tier) Len() int { return len(t.routes) }

// Weight is router i's weight in its pool.
func (t *Tier) Weight(i int) int { return t.weights[i] }

// Random picks a router at random, in proportion to the weights.
func (t *Tier) Random() int {
	if len(t.cum) == 1 {
		return 0
	}
	n := rand.IntN(t.cum[len(t.cum)-1])
	return sort.Search(len(t.cum), func(i int) bool { return t.cum[i] > n })
}

// InFlight is how many calls router i has in flight over the whole fleet:
// chosen by any replica and not yet reported by any, within the in-flight
// bound. It is never negative.
func (t *Tier) InFlight(i int) int64 { return t.routes[i].stats.inFlight() }

// Latency is router i's recent upstream latency, from gecholog's
// transaction log; ok is false until a call of it has been heard of.
func (t *Tier) Latency(i int) (d time.Duration, ok bool) { return t.routes[i].stats.latency() }

// Headroom is the share of router i's rate limit left, from 0 (none until
// its reset) to 1, as its upstream's rate-limit headers last said; ok is
// false when it sent none.
func (t *Tier) Headroom(i int, now time.Time) (h float64, ok bool) {
	return t.routes[i].stats.headroom(now)
}

// random is weighted random: the default, and the original's rule.
type random struct{}

func (random) Pick(t *Tier) int { return t.Random() }
