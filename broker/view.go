package broker

import (
	"slices"
	"time"
)

// RouterView is one router of one pool as this replica sees it, for
// operators: its phase, the record that put it there, and its calls.
type RouterView struct {
	Ingress string
	Router  string
	Phase   Phase
	// Record is the live record the view acts on (nil when the router is
	// enabled and none is held), with times held to the policy.
	Record *Record
	// Stored is the record as the store holds it when the policy held it
	// shorter (see Policy.Clamp); nil otherwise.
	Stored *Record
	// Provisional says the disable was announced by another replica and
	// has not landed in the store yet.
	Provisional bool
	// Probe names the replica holding the router's probe, while one does.
	Probe string
	// Chosen counts the calls this replica sent the router for the pool.
	Chosen uint64
	// Priority is the router's tier in the pool, lower first, and Weight
	// its weight in the pool.
	Priority int
	Weight   int
	// InFlight is the calls in flight to the router over the whole fleet,
	// and Share its share of the pool's recent choices, fleet-wide (as of
	// the last Refresh).
	InFlight int64
	Share    float64
	// Sessions is how many sessions of pools with "session" affinity are
	// pinned to the router (see Tier.Sessions).
	Sessions int64
	// BudgetUntil is when the router, out for its spent budget, takes
	// calls again (zero: it is not out for its budget), and BudgetWhy says
	// which budget and how it was spent.
	BudgetUntil time.Time
	BudgetWhy   string
	// Latency is the router's recent upstream latency (LatencyKnown false
	// until one of its calls is heard of), and Headroom the share of its
	// rate limit left (HeadroomKnown false while its upstream says none).
	Latency       time.Duration
	LatencyKnown  bool
	Headroom      float64
	HeadroomKnown bool
	// Room is what the headroom strategy reads for the router's next call
	// (as of the last Refresh or transaction heard): Headroom less the
	// calls that its upstream's last answer could not know of, within
	// this replica's share of the quota window (see Tier.Headroom).
	// It is 0 while HeadroomKnown is false.
	Room float64
	// RateLimitedUntil is when a router its upstream said has no request
	// or token left takes calls again (its reset, held within the longest
	// disable); zero when it is not waiting.
	RateLimitedUntil time.Time
	// Calls and Failures are the router's calls reported, and the failures
	// among them, over the whole fleet within the failure-rate window.
	Calls, Failures int64
	// Price is the router's price (nil: none given), and Usage its tokens
	// and spend over the whole fleet since this replica started.
	Price *Price
	Usage UsageCounts
	// CallCost is what one call to the router is expected to cost, as
	// the cost strategy reads it: its price applied to the pool's average
	// call (PoolView.Mix); 0 when it has no price.
	CallCost float64
}

// InFlightBound is how long a chosen call counts as in flight, which is
// also the span RouterView.Share is counted over.
func (b *Broker) InFlightBound() time.Duration { return b.cur().bound }

// Heard is when this replica last heard of a finished call from gecholog's
// transaction log (zero: never).
func (b *Broker) Heard() time.Time {
	if ns := b.heard.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

// View returns every router of every pool, pools in the order they were
// configured and routers in each pool's order, as this replica sees them
// at now.
func (b *Broker) View(now time.Time) []RouterView {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []RouterView
	t := b.cur()
	for _, ingress := range t.order {
		out = b.poolView(out, t.pools[ingress], now)
	}
	return out
}

// poolView appends p's routers as this replica sees them at now to out.
// b.mu must be held.
func (b *Broker) poolView(out []RouterView, p *pool, now time.Time) []RouterView {
	var all int64
	for _, o := range p.routes {
		all += o.stats.fleetChosen.Load()
	}
	for i, r := range p.routers {
		rt := p.routes[i]
		v := RouterView{Ingress: p.ingress, Router: r.Path, Phase: phase(rt.live, now), Chosen: p.chosen[i].Load(),
			Provisional: !rt.heard.IsZero(), Priority: r.Priority, Weight: r.Weight, InFlight: rt.stats.inFlight(), Sessions: rt.stats.pinned.Load()}
		if all > 0 {
			v.Share = float64(rt.stats.fleetChosen.Load()) / float64(all)
		}
		if s := rt.spent.Load(); s.untilNs() > now.UnixNano() {
			v.BudgetUntil = s.until
			if g := rt.budget.Load(); g != nil {
				v.BudgetWhy = s.why(g.loc)
			}
		} else if until, why := p.spentWhy(now); !until.IsZero() {
			v.BudgetUntil, v.BudgetWhy = until, "the pool's own "+why // out with its pool
		}
		v.Latency, v.LatencyKnown = rt.stats.latency()
		v.Headroom, v.HeadroomKnown = rt.stats.headroom(now)
		v.Room = v.Headroom
		if r := rt.stats.room.Load(); r != nil {
			v.Room = r.share(rt.stats.taken(r))
		}
		v.RateLimitedUntil = rt.stats.waitsUntil(now)
		v.Failures, v.Calls = b.rate(rt)
		v.Price, v.Usage = rt.price.Load(), rt.stats.use.snapshot()
		if m := p.mix.Load(); v.Price != nil && m != nil {
			v.CallCost = v.Price.PerCall(m.TokenMix)
		}
		if rt.live != nil && v.Phase != Enabled {
			rec := *rt.live
			v.Record = &rec
			if rec.Probe != nil && now.Before(rec.Probe.Until) {
				v.Probe = rec.Probe.By
			}
		}
		if rt.stored != nil && v.Record != nil {
			stored := *rt.stored
			v.Stored = &stored
		}
		out = append(out, v)
	}
	return out
}

// Unknown returns the routers no pool has that the store has held records
// for since this replica started (at most 256 are named): replicas ignore
// them.
func (b *Broker) Unknown() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for r := range b.unknown {
		if r != "" {
			out = append(out, r)
		}
	}
	slices.Sort(out)
	return out
}

// PoolView is one pool as this replica sees it at one moment: what
// Explain reads.
type PoolView struct {
	Ingress string
	// Strategy names how a router is chosen within a tier, never "".
	Strategy string
	// AllDisabled is what the pool's calls get when no router is enabled.
	AllDisabled AllDisabled
	// Replica names this replica, which may hold a router's probe call.
	Replica string
	// Routers are the pool's routers in its order.
	Routers []RouterView
	// Mix is the pool's average call, by which RouterView.CallCost
	// prices its routers, as last taken; MixHeard is false while no call
	// of its routers has been heard with its tokens, and Mix is
	// DefaultTokenMix.
	Mix      TokenMix
	MixHeard bool
	// Affinity is how the pool keeps a conversation on one router; the
	// zero value when it does not.
	Affinity Affinity
	// BudgetSpent is the pool's rule while every router it has enabled is
	// out for its budget (BudgetIngress or BudgetSoonest).
	BudgetSpent string
	// BudgetUntil is when the pool, out for its own spent budget, takes
	// calls again (zero: it is not out for its budget), and BudgetWhy says
	// which cap and how it was spent.
	BudgetUntil time.Time
	BudgetWhy   string
}

// PoolView returns the pool for ingress as this replica sees it at now;
// false when no pool has that ingress.
func (b *Broker) PoolView(ingress string, now time.Time) (PoolView, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	t := b.cur()
	p := t.pools[ingress]
	if p == nil {
		return PoolView{}, false
	}
	v := PoolView{Ingress: ingress, Strategy: p.name, AllDisabled: t.policy.AllDisabled, Replica: b.id,
		Routers: b.poolView(nil, p, now), Mix: DefaultTokenMix, Affinity: p.affinity, BudgetSpent: BudgetIngress}
	if p.soonest {
		v.BudgetSpent = BudgetSoonest
	}
	if m := p.mix.Load(); m != nil {
		v.Mix, v.MixHeard = m.TokenMix, m.calls > 0
	}
	v.BudgetUntil, v.BudgetWhy = p.spentWhy(now)
	return v, true
}
