package broker

import (
	"errors"
	"fmt"
	"regexp"
	"sync/atomic"
)

// Router is one member of a pool: a gecholog router path, its share of the
// traffic relative to the other members of its tier, and its tier.
type Router struct {
	Path   string
	Weight int
	// Priority is the router's tier, lower first: calls go to the best
	// tier that has an enabled router (0, the default, is the best).
	Priority int
	// Budget caps what the router may use per period; nil: none. A router
	// has one budget: the pools that list it give the same one, or leave
	// it out.
	Budget *Budget
	// Price is what the router's upstream charges per million tokens;
	// nil when not given. A router has one price: the pools that list it
	// give the same one, or leave it out.
	Price *Price
}

// Pool is a set of routers that stand in for one ingress router. A request
// context for Ingress is answered with one of Routers.
type Pool struct {
	Ingress string
	Routers []Router
	// Strategy names how a router is chosen within a tier (see
	// Strategies); "" is the default (StrategyName).
	Strategy string
	// Affinity keeps a conversation on one router; the zero value keeps
	// none. A call without a key goes by Strategy.
	Affinity Affinity
	// BudgetSpent is what the pool's calls do when every router it has
	// enabled is out for its budget: BudgetIngress (the default) or
	// BudgetSoonest.
	BudgetSpent string
	// Budget caps what the calls made through the pool's ingress may use
	// per period, whichever router they went to, each at its router's
	// price; nil: none. While it is spent the pool is out: its calls stay
	// on the ingress router's own outbound whatever BudgetSpent says
	// (every router is back at the same instant, the pool's reset, so no
	// router is back sooner, and any would spend past the cap).
	Budget *Budget
}

// DefaultPools returns the original broker's pool: /azure/ spread over
// /azure/gpt35turbo/, /azure/gpt4/ and /azure/dud/ with equal weights.
func DefaultPools() []Pool {
	return []Pool{{
		Ingress: "/azure/",
		Routers: []Router{
			{Path: "/azure/gpt35turbo/", Weight: 1},
			{Path: "/azure/gpt4/", Weight: 1},
			{Path: "/azure/dud/", Weight: 1},
		},
	}}
}

// maxWeight keeps the sum of weights far from overflow and makes a typo such
// as 1e9 a startup error rather than a silent monopoly.
const maxWeight = 1_000_000

// routerPath is what gecholog accepts as a router path: it starts and ends
// with "/" and holds only letters, digits and "/".
var routerPath = regexp.MustCompile(`^/([A-Za-z0-9]+/)+$`)

// ValidPath reports whether p is a gecholog router path.
func ValidPath(p string) bool { return routerPath.MatchString(p) }

// ValidatePools checks that pools can be served: at least one pool, valid
// and distinct ingress paths, a known strategy, at least one router each,
// valid router paths, no router twice in a pool or equal to its ingress,
// weights in 1..1000000, priorities from 0, and prices of 0 or more,
// the same wherever a router is given one, and a price for every router
// of a pool whose strategy compares prices (cost), given by any pool.
func ValidatePools(pools []Pool) error {
	if len(pools) == 0 {
		return errors.New("no pools: give at least one pool with an ingress and routers")
	}
	ingress := map[string]bool{}
	priced := map[string]string{}    // router → the pool that gave its price
	budgeted := map[string]*Budget{} // router → its budget
	for _, p := range pools {
		if !ValidPath(p.Ingress) {
			return fmt.Errorf("pool ingress %q: a router path starts and ends with / and holds only letters, digits and /", p.Ingress)
		}
		if ingress[p.Ingress] {
			return fmt.Errorf("pool ingress %q appears twice", p.Ingress)
		}
		ingress[p.Ingress] = true
		if len(p.Routers) == 0 {
			return fmt.Errorf("pool %q has no routers", p.Ingress)
		}
		if _, err := strategy(p.StrategyName()); err != nil {
			return fmt.Errorf("pool %q: %w", p.Ingress, err)
		}
		if p.Strategy == SessionsStrategy && !p.Affinity.Session {
			return fmt.Errorf(`pool %q: strategy %q places a conversation's first call by the sessions pinned to each router, which only "session" affinity keeps: give the pool "affinity": "session", or another strategy`, p.Ingress, p.Strategy)
		}
		if err := p.Affinity.validate(); err != nil {
			return fmt.Errorf("pool %q: %w", p.Ingress, err)
		}
		if p.BudgetSpent != "" && p.BudgetSpent != BudgetIngress && p.BudgetSpent != BudgetSoonest {
			return fmt.Errorf("pool %q: budget_spent %q: give %q (calls stay on the ingress router while every router is out for its budget) or %q (they go to the router whose budget resets soonest)", p.Ingress, p.BudgetSpent, BudgetIngress, BudgetSoonest)
		}
		if err := p.validateBudget(pools); err != nil {
			return err
		}
		seen := map[string]bool{}
		for _, r := range p.Routers {
			switch {
			case !ValidPath(r.Path):
				return fmt.Errorf("pool %q: router %q: a router path starts and ends with / and holds only letters, digits and /", p.Ingress, r.Path)
			case r.Path == p.Ingress:
				return fmt.Errorf("pool %q lists its own ingress as a router", p.Ingress)
			case seen[r.Path]:
				return fmt.Errorf("pool %q lists router %q twice", p.Ingress, r.Path)
			case r.Weight < 1 || r.Weight > maxWeight:
				return fmt.Errorf("pool %q: router %q: weight %d is outside 1..%d", p.Ingress, r.Path, r.Weight, maxWeight)
			case r.Priority < 0:
				return fmt.Errorf("pool %q: router %q: priority %d: give 0 (the first tier) or more", p.Ingress, r.Path, r.Priority)
			}
			if r.Price != nil {
				if err := r.Price.validate(); err != nil {
					return fmt.Errorf("pool %q: router %q: %w", p.Ingress, r.Path, err)
				}
				if other, ok := priced[r.Path]; ok && !samePrice(pools, other, r) {
					return fmt.Errorf("pool %q: router %q: its price differs from the one pool %q gives it; a router has one price", p.Ingress, r.Path, other)
				}
				priced[r.Path] = p.Ingress
			}
			if r.Budget != nil {
				if err := r.Budget.validate(r.Price != nil || priceOf(pools, r.Path) != nil); err != nil {
					return fmt.Errorf("pool %q: router %q: %w", p.Ingress, r.Path, err)
				}
				if other, ok := budgeted[r.Path]; ok && *other != *r.Budget {
					return fmt.Errorf("pool %q: router %q: its budget differs from the one another pool gives it; a router has one budget", p.Ingress, r.Path)
				}
				budgeted[r.Path] = r.Budget
			}
			seen[r.Path] = true
		}
	}
	for _, p := range pools {
		if !strategies[p.StrategyName()].NeedsPrices {
			continue
		}
		for _, r := range p.Routers {
			if _, ok := priced[r.Path]; !ok {
				return fmt.Errorf(`pool %q: router %q has no price: the %s strategy compares what a call costs on each router of its pool, so it needs every router's price; give it one, per million tokens: "price": {"input": 2.5, "output": 10}`,
					p.Ingress, r.Path, p.Strategy)
			}
		}
	}
	return nil
}

// What a pool's calls do when every router it has enabled is out for its
// budget (Pool.BudgetSpent).
const (
	BudgetIngress = "ingress" // stay on the ingress router's own outbound
	BudgetSoonest = "soonest" // go to the router whose budget resets soonest
)

// priceOf is the price a pool of pools gives router; nil when none does.
func priceOf(pools []Pool, router string) *Price {
	for _, p := range pools {
		for _, r := range p.Routers {
			if r.Path == router && r.Price != nil {
				return r.Price
			}
		}
	}
	return nil
}

// samePrice reports whether the pool for ingress gives r's router the
// price r has.
func samePrice(pools []Pool, ingress string, r Router) bool {
	for _, p := range pools {
		if p.Ingress != ingress {
			continue
		}
		for _, o := range p.Routers {
			if o.Path == r.Path {
				return o.Price != nil && *o.Price == *r.Price
			}
		}
	}
	return false
}

type pool struct {
	ingress  string
	routers  []Router
	strategy Strategy
	name     string // the strategy's name, for operators
	affinity Affinity
	seed     uint64          // the pool's part in the key a session is remembered by
	ids      []int           // each router's id, by index in routers
	routes   []*route        // each router, by index in routers
	tab      *table          // the configuration the pool belongs to
	chosen   []atomic.Uint64 // choices by index in routers
	live     atomic.Pointer[choice]
	mix      atomic.Pointer[poolMix] // the pool's average call, as last taken
	stranded bool                    // no router enabled; guarded by Broker.mu
	soonest  bool                    // Pool.BudgetSpent is BudgetSoonest
	budget   *poolBudget             // Pool.Budget and what it counted; nil: none
	// timed says the pool's choices note their time (routeStats.picked):
	// its strategy or affinity reads what rate limit is left.
	timed bool
}

// choice is an immutable snapshot of a pool, swapped whole when a view
// changes, so a request reads it without locking.
type choice struct {
	// tiers are the enabled routers by priority, best first; a tier
	// without one is left out.
	tiers []*Tier
	// probes are the probe calls this replica holds for the pool's routers.
	probes []*probeSlot
	// unclaimed are routers on probation whose probe nobody holds: a
	// request claims it.
	unclaimed []*route
	// fallback answers when no router is enabled: the panic choice, or
	// with AllDisabled Any every router but manual ones (cumulative
	// weights in fallbackCum).
	fallback    []*route
	fallbackCum []int
	fallbackIdx []int
	// spent says no router is enabled because those that are healthy are
	// out for their budget: fallback is the pool's BudgetSpent rule's.
	spent bool
	// poolSpent says the pool's own budget is spent: no router takes its
	// calls, and they stay on the ingress router.
	poolSpent bool
}
