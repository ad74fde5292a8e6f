package broker

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"time"
)

// Validate checks pools, policy and an in-flight bound exactly as New and
// Reconfigure do.
func Validate(pools []Pool, policy Policy, inFlightBound time.Duration) error {
	_, _, err := validate(pools, policy, inFlightBound)
	return err
}

// validate checks a configuration as New and Reconfigure take it, and
// returns the policy resolved and the in-flight bound (0: the default).
func validate(pools []Pool, policy Policy, bound time.Duration) (Policy, time.Duration, error) {
	if err := ValidatePools(pools); err != nil {
		return Policy{}, 0, err
	}
	policy, err := policy.Resolve()
	if err != nil {
		return Policy{}, 0, err
	}
	if bound <= 0 {
		bound = DefaultInFlightBound
	}
	if !InFlightBoundRange.Contains(bound) {
		return Policy{}, 0, fmt.Errorf("in-flight bound %v: must be %v", bound, InFlightBoundRange)
	}
	return policy, bound, nil
}

// Reconfigure makes pools, policy and the in-flight bound (0: the
// default) the configuration in force, after validating them exactly as
// New does; on an error nothing changes. The swap is atomic: a call sees
// the old configuration or the new one, never a mix.
//
// A router in both keeps its view of health and its statistics (calls in
// flight, latency, headroom, failure counts). A router removed gets no
// call chosen after Reconfigure returns; a write of its health already on
// its way finishes. A router added starts enabled, is chosen at once, and
// its state is then read from the store in the background. The policy
// applies to decisions from now on. The windows a router's calls are
// counted over (the in-flight bound, the failure-rate window) keep the
// span they were made with; a router added gets the new ones.
func (b *Broker) Reconfigure(pools []Pool, policy Policy, inFlightBound time.Duration) error {
	policy, bound, err := validate(pools, policy, inFlightBound)
	if err != nil {
		return err
	}
	now := time.Now()
	b.mu.Lock()
	old := b.cur()
	t := b.build(pools, policy, bound, old, now)
	var added []*route
	for _, rt := range t.members {
		if old.routers[rt.path] == nil {
			added = append(added, rt)
		}
	}
	for _, rt := range old.members {
		if t.routers[rt.path] == nil {
			rt.pools = nil // a write that settles later rebuilds no pool
		}
	}
	b.tab.Store(t)
	b.arm(now)
	closed := b.closed
	if !closed && len(added) > 0 && b.shared() != nil {
		b.writes.Add(1)
	} else {
		added = nil
	}
	b.mu.Unlock()
	if len(added) > 0 {
		go func() {
			defer b.writes.Done()
			ctx, cancel := context.WithTimeout(b.writeContext, 10*time.Second)
			defer cancel()
			_ = b.reload(ctx, added) // the watcher brings what this misses
		}()
	}
	return nil
}

// build makes the table for pools, policy and bound, reusing the routes
// and carrying over the choice counts old has. b.mu must be held (or, in
// New, nothing else may run yet).
func (b *Broker) build(pools []Pool, policy Policy, bound time.Duration, old *table, now time.Time) *table {
	t := &table{pools: map[string]*pool{}, routers: map[string]*route{}, policy: policy, bound: bound,
		readsInFlight: slices.ContainsFunc(pools, Pool.ReadsInFlight)}
	var names []string
	if n := b.names.Load(); n != nil {
		names = slices.Clone(*n)
	}
	for _, pc := range pools {
		s, _ := strategy(pc.StrategyName()) // validated
		p := &pool{ingress: pc.Ingress, routers: slices.Clone(pc.Routers), strategy: s, name: pc.StrategyName(), affinity: pc.Affinity, soonest: pc.BudgetSpent == BudgetSoonest, timed: strategies[pc.StrategyName()].NeedsTransactionLog || pc.Affinity.On(), seed: fmix(sessionHash(pc.Ingress)), chosen: make([]atomic.Uint64, len(pc.Routers)), tab: t}
		var was *pool
		if old != nil {
			was = old.pools[p.ingress]
		}
		if was != nil {
			p.stranded = was.stranded
		}
		t.pools[p.ingress] = p
		t.order = append(t.order, p.ingress)
		for i, r := range p.routers {
			rt := t.routers[r.Path]
			if rt == nil {
				rt = b.every[r.Path]
				if rt == nil {
					rt = &route{path: r.Path, seed: sessionHash(r.Path), id: len(names), stats: newRouteStats(bound, policy.RateWindow, now)}
					rt.clean.Store(true)
					b.every[r.Path] = rt
					names = append(names, r.Path)
				}
				rt.pools = nil
				t.routers[r.Path] = rt
				t.members = append(t.members, rt)
			}
			rt.pools = append(rt.pools, p)
			p.ids = append(p.ids, rt.id)
			p.routes = append(p.routes, rt)
			if was != nil {
				if j := slices.IndexFunc(was.routers, func(w Router) bool { return w.Path == r.Path }); j >= 0 {
					p.chosen[i].Store(was.chosen[j].Load())
				}
			}
		}
	}
	b.names.Store(&names)
	t.remember = map[string][]*pool{}
	for _, ingress := range t.order {
		if p := t.pools[ingress]; p.affinity.Session {
			for _, rt := range p.routes {
				t.remember[rt.path] = append(t.remember[rt.path], p)
			}
		}
	}
	prices := map[string]*Price{} // the pools agree on each: ValidatePools
	for _, pc := range pools {
		for _, r := range pc.Routers {
			if r.Price != nil {
				price := *r.Price
				prices[r.Path] = &price
			}
		}
	}
	budgets := map[string]*budgetConfig{} // likewise
	for _, pc := range pools {
		for _, r := range pc.Routers {
			if r.Budget != nil {
				loc, _ := r.Budget.location() // validated
				budgets[r.Path] = &budgetConfig{Budget: *r.Budget, loc: loc}
			}
		}
	}
	for _, rt := range t.members {
		rt.price.Store(prices[rt.path])
		rt.budget.Store(budgets[rt.path])
		s := rt.spentAt(now)
		rt.spent.Store(&s)
	}
	b.setBudgets(t, pools)
	for _, ingress := range t.order {
		p := t.pools[ingress]
		p.live.Store(b.snapshot(p, now))
	}
	return t
}
