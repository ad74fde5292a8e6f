package broker

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"time"
)

// A Strategy chooses which router of a tier a call goes to. This comment
// is its whole contract; docs/strategies.md points here.
//
// Pick is asked, on every request context for a pool that names the
// strategy (DefaultStrategy when it names none), about the pool's tiers
// in priority order, best first, until it picks a router. It is not asked
// when a probe call is due (the probe goes to the router on probation) or
// when no router of the pool is enabled (the all-disabled rule answers).
//
// Its input: t holds the enabled routers of one priority of the pool, in
// the order of the pools file, and at least one: a tier of one router is
// asked too. t.Weight(i) is 1 or more. t is immutable, but the statistics
// it reads (InFlight, Latency, Headroom) are the whole fleet's and change
// as calls are made and heard of, even between two reads in one Pick. The
// same t is handed to many calls at once and is replaced whenever a
// router's health changes: read it during Pick, never keep it.
//
// Its return:
//   - an index i in t, 0 <= i < t.Len(): the call goes to router i and is
//     counted as chosen;
//   - -1 (any negative number): none of this tier can take the call; the
//     next tier is asked. When every tier declines, the call goes to a
//     router of the best tier at random by weight (Tier.Random), counted
//     as panic: a call that may work beats one that cannot.
//
// t.Len() or more is a bug: the replica panics on it.
//
// Pick runs on the request's path: it must not allocate, lock, wait or do
// I/O, and its time must be bounded whatever the tier's size (leastBusy
// and mostHeadroom compare a sample of a tier over 16 routers). One value
// serves every pool that names the strategy, from many goroutines at
// once: a strategy keeps no state of its own, only what t gives.
//
// Adding a strategy is one type in a file of its own, using only what
// Tier exports, and one line in strategies.
type Strategy interface {
	Pick(t *Tier) int
}

// strategies are the strategies a pool can name, by name, each with what
// it needs from the replica.
var strategies = map[string]registration{
	"random":     {Strategy: random{}},
	"least-busy": {Strategy: leastBusy{}, ReadsInFlight: true},
	"latency":    {Strategy: lowestLatency{}, NeedsTransactionLog: true, ReadsInFlight: true},
	"headroom":   {Strategy: mostHeadroom{}, NeedsTransactionLog: true, ReadsInFlight: true},
	"cost":       {Strategy: cheapest{}, NeedsTransactionLog: true, NeedsPrices: true, ReadsInFlight: true},
	// The sessions of a pool with "session" affinity are pinned where the
	// transaction log says their calls went.
	SessionsStrategy: {Strategy: fewestSessions{}, NeedsTransactionLog: true, ReadsInFlight: true},
}

// registration is a strategy as strategies holds it.
type registration struct {
	Strategy
	// NeedsTransactionLog says the strategy reads Tier.Latency or
	// Tier.Headroom, which only gecholog's transaction log fills: while
	// the replicas do not hear it, the replica warns, `broker status`
	// says so and `broker check` compares gecholog's logger subject with
	// the broker's, for each pool that names the strategy.
	NeedsTransactionLog bool
	// NeedsPrices says the strategy reads Tier.CallCost: ValidatePools
	// refuses a pool that names it with a router without a price.
	NeedsPrices bool
	// ReadsInFlight says the strategy reads Tier.InFlight or
	// Tier.Headroom (which takes the calls in flight from what is left):
	// the fleet's calls in flight, which the replicas then tell each other
	// every few milliseconds while they change (see Broker.ReadsInFlight).
	ReadsInFlight bool
}

// DefaultStrategy is what a pool that names none uses: weighted random, as
// the original broker chose; SessionsStrategy for a pool with "session"
// affinity (see Pool.StrategyName).
const DefaultStrategy = "random"

// SessionsStrategy is the strategy that places a conversation's first
// call by the sessions pinned to each router (fewestSessions).
const SessionsStrategy = "sessions"

// StrategyName is the strategy p's calls without a session key go by: the
// one it names; when it names none, SessionsStrategy with "session"
// affinity, whose first call of a conversation pins the conversation
// where it goes, and DefaultStrategy otherwise.
func (p Pool) StrategyName() string {
	switch {
	case p.Strategy != "":
		return p.Strategy
	case p.Affinity.Session:
		return SessionsStrategy
	}
	return DefaultStrategy
}

// Strategies lists the names a pool may give, sorted.
func Strategies() []string {
	names := make([]string, 0, len(strategies))
	for n := range strategies {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// strategy returns the named strategy, or an error naming the known ones;
// "" is none (see Pool.StrategyName).
func strategy(name string) (Strategy, error) {
	s, ok := strategies[name]
	if !ok {
		return nil, fmt.Errorf("strategy %q: %s", name, strings.Join(Strategies(), ", "))
	}
	return s.Strategy, nil
}

// NeedsTransactionLog reports whether p's strategy chooses by what
// gecholog's transaction log says, as its line in strategies declares. An
// unknown strategy needs nothing (ValidatePools refuses it).
func (p Pool) NeedsTransactionLog() bool {
	return strategies[p.StrategyName()].NeedsTransactionLog
}

// ReadsInFlight reports whether a call of p is chosen by the fleet's calls
// in flight: its strategy reads them (as its line in strategies declares),
// its affinity bounds a router's load by them, or a budget of the pool or
// of a router counts them as spending it.
func (p Pool) ReadsInFlight() bool {
	if strategies[p.StrategyName()].ReadsInFlight || p.Affinity.On() || p.Budget != nil {
		return true
	}
	return slices.ContainsFunc(p.Routers, func(r Router) bool { return r.Budget != nil })
}

// Tier is the enabled routers of one priority of a pool, as a strategy sees
// them: each router's weight and live statistics. It is immutable; the
// statistics behind it change as the fleet's calls do. Its methods are
// what every strategy, shipped or new, reads; each is a few atomic loads.
type Tier struct {
	routes  []*route
	weights []int
	cum     []int    // cumulative weights, for Random
	index   []int    // each router's index in the pool
	seeds   []uint64 // each router's seed, for a session's order
	equal   bool     // every weight is the same
	costs   atomic.Pointer[tierCosts]
}

// Len is the number of routers, 1 or more.
func (t *Tier) Len() int { return len(t.routes) }

// Weight is router i's weight in its pool, 1 or more.
func (t *Tier) Weight(i int) int { return t.weights[i] }

// Random picks a router at random, in proportion to the weights.
func (t *Tier) Random() int {
	if len(t.cum) == 1 {
		return 0
	}
	n := rand.IntN(t.cum[len(t.cum)-1])
	return sort.Search(len(t.cum), func(i int) bool { return t.cum[i] > n })
}

// Sessions is how many sessions of pools with "session" affinity are
// pinned to router i: remembered, with their last call on it, as
// gecholog's transaction log told every replica alike.
func (t *Tier) Sessions(i int) int64 { return t.routes[i].stats.pinned.Load() }

// InFlight is how many calls router i has in flight over the whole fleet:
// chosen by any replica and not yet reported by any, within the in-flight
// bound. It is never negative.
func (t *Tier) InFlight(i int) int64 { return t.routes[i].stats.inFlight() }

// Latency is router i's recent upstream latency, from gecholog's
// transaction log; ok is false until a call of it has been heard of.
func (t *Tier) Latency(i int) (d time.Duration, ok bool) { return t.routes[i].stats.latency() }

// Headroom is the share of router i's rate limit left for one more call,
// from 0 (none until its reset) to 1: what its upstream's rate-limit
// headers last said was left, less the calls chosen since the answered
// call was sent, which that answer could not know of; with several
// replicas, no more than this replica's share of what the quota window's
// first answer said was left. ok is false when its upstream sent none.
func (t *Tier) Headroom(i int) (h float64, ok bool) {
	s := &t.routes[i].stats
	r := s.room.Load()
	if r == nil {
		return 0, false
	}
	return r.share(s.taken(r)), true
}

// random is weighted random: the default, and the original's rule.
type random struct{}

func (random) Pick(t *Tier) int { return t.Random() }

// Shares: by weight (see Sharer).
func (random) Shares(t []RouterView, share []float64) bool {
	byWeight(t, share)
	return true
}
