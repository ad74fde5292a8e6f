package broker

import (
	"log/slog"
	"math/rand/v2"
	"slices"
	"sort"
	"sync/atomic"
	"time"
)

// probeSlot is one probe this replica may send: the first request that
// takes the token sends the call.
type probeSlot struct {
	at    time.Time // the claim it belongs to
	token atomic.Bool
	route *route
}

// Choose picks the router that a request context for ingress goes to and
// returns its id, its index in Members. It returns -1 when the call should
// stay on the ingress router: ingress is no pool's, or no router of the
// pool may take calls. It reads an immutable snapshot and never waits.
func (b *Broker) Choose(ingress []byte) int { return b.ChooseSession(ingress, nil) }

// ChooseSession is Choose for a call of the session key names (nil or
// empty: none). In a pool with affinity (see Affinity) a call with a key
// goes to the first router of its session's order, within the best tier
// with a router that can take it, that has rate limit left and is within
// its bound of the calls in flight; every replica makes the same choice
// from the same tier. In a pool with "session" affinity, a session the
// transaction log told of (see Remember) goes back to the router it was
// first heard on while that router, in the best tier that can take the
// call, can take it (with Affinity.Stay: to the router it was last heard
// on, in any tier). A key longer than MaxSessionKey is none. A call
// without one, and every call of a pool without affinity, goes by the
// pool's strategy. The key is read during the call only, never kept.
func (b *Broker) ChooseSession(ingress, key []byte) int {
	return b.ChooseIn(b.PoolRef(ingress), ingress, key)
}

// PoolRef is the pool a request context's gl_path names, looked up once
// for both the header its affinity wants and the call's choice (see
// Broker.PoolRef); the zero value is no pool's.
type PoolRef struct{ p *pool }

// PoolRef returns the pool for ingress, as the configuration in force
// has it; none when ingress is no pool's. It does not allocate.
func (b *Broker) PoolRef(ingress []byte) PoolRef {
	return PoolRef{b.cur().pools[string(ingress)]} // does not allocate
}

// Affinity is the pool's affinity; none for no pool.
func (in PoolRef) Affinity() Affinity {
	if in.p == nil {
		return Affinity{}
	}
	return in.p.affinity
}

// ChooseIn is ChooseSession for the pool in, which PoolRef returned for
// ingress: the pool is looked up once per call. A configuration swapped
// in between the two ends with the calls chosen by the one before.
func (b *Broker) ChooseIn(in PoolRef, ingress, key []byte) int {
	p := in.p
	if p == nil {
		b.calls[NotIngress].Add(1)
		if b.debug {
			b.log.Debug("not an ingress; leaving the call alone", slog.String("gl_path", clip(string(ingress))))
		}
		return -1
	}
	c := p.live.Load()
	var h uint64
	var home *route // where the log says the session goes back to; nil: nowhere
	keyed := false
	if p.affinity.On() {
		if keyed = len(key) > 0 && len(key) <= MaxSessionKey; keyed {
			h = sessionHash(key)
			if p.affinity.Session {
				home = b.memory.home(h ^ p.seed)
			}
		} else {
			b.sessions.noKey.Add(1)
		}
	}
	for _, rt := range c.unclaimed {
		// Traffic wants the probe: claim it in the background. Without
		// traffic nobody claims, and the key expires by itself.
		if rt.claiming.CompareAndSwap(false, true) {
			b.write(rt, event{kind: claim, by: b.id, at: time.Now()})
		}
	}
	for _, s := range c.probes {
		if keyed && (home != nil && s.route != home || home == nil && !p.firstFor(c, h, s.route)) {
			continue // not this session's router: it would move for one call
		}
		if s.token.CompareAndSwap(true, false) {
			b.log.Info("sending the probe call", slog.String("router", s.route.path))
			return b.chose(p, s.route, slices.Index(p.ids, s.route.id), Chosen)
		}
	}
	if home != nil && p.affinity.Stay {
		// The session stays where it last went, in whatever tier.
		for _, t := range c.tiers {
			if j := t.indexOf(home); j >= 0 {
				if t.takes(j, p.loadFactor()) {
					return b.remembered(p, t, j)
				}
				break
			}
		}
	}
	// What the strategy is asked and what its answers mean: see Strategy.
	for _, t := range c.tiers {
		if keyed {
			if home != nil && !p.affinity.Stay {
				// Back to where the session was first heard, if that is in
				// the best tier that can take the call.
				if j := t.indexOf(home); j >= 0 && t.takes(j, p.loadFactor()) {
					return b.remembered(p, t, j)
				}
			}
			if i, spilled := t.affine(h, p.loadFactor()); i >= 0 {
				b.sessions.byOrder.Add(1)
				if spilled {
					b.sessions.spilled.Add(1)
				}
				return b.chose(p, t.routes[i], t.index[i], Chosen)
			}
			continue
		}
		if i := p.strategy.Pick(t); i >= 0 {
			return b.chose(p, t.routes[i], t.index[i], Chosen)
		}
	}
	if len(c.tiers) > 0 {
		t := c.tiers[0]
		i := t.Random()
		return b.chose(p, t.routes[i], t.index[i], Panicked)
	}
	if len(c.fallback) == 0 {
		b.calls[Stranded].Add(1)
		return -1
	}
	i := 0
	if cum := c.fallbackCum; len(cum) > 1 {
		n := rand.IntN(cum[len(cum)-1])
		i = sort.Search(len(cum), func(i int) bool { return cum[i] > n })
	}
	return b.chose(p, c.fallback[i], c.fallbackIdx[i], Panicked)
}

// remembered counts a keyed call sent to its session's remembered router,
// j of t, and returns its id.
func (b *Broker) remembered(p *pool, t *Tier, j int) int {
	b.memory.remembered.Add(1) // one of the keyed calls (Sessions)
	return b.chose(p, t.routes[j], t.index[j], Chosen)
}

// chose counts a choice of rt, router index of p, and returns its id.
func (b *Broker) chose(p *pool, rt *route, index int, outcome Outcome) int {
	b.calls[outcome].Add(1)
	p.chosen[index].Add(1)
	n := rt.stats.chosen.total.Add(1)
	if p.timed {
		rt.stats.picked(n, time.Now())
	}
	b.stir()
	if b.debug {
		b.log.Debug("chose router", slog.String("ingress", p.ingress), slog.String("router", rt.path))
	}
	return rt.id
}

// rebuild swaps in a new snapshot of p and logs when p runs out of
// enabled routers or has one again. b.mu must be held.
func (b *Broker) rebuild(p *pool, now time.Time) {
	c := b.snapshot(p, now)
	p.live.Store(c)
	switch {
	case c.poolSpent:
		p.stranded = true // said by the budget's check
	case len(c.tiers) == 0 && !p.stranded && c.spent:
		p.stranded = true
		rule, calls := BudgetIngress, "stay on the ingress router's own outbound until a budget resets"
		if p.soonest {
			rule, calls = BudgetSoonest, "go to the router whose budget resets soonest"
		}
		b.log.Warn("every router of the pool is out for its budget or disabled", slog.String("ingress", p.ingress),
			slog.String("budget_spent", rule), slog.String("calls", calls))
	case len(c.tiers) == 0 && !p.stranded:
		p.stranded = true
		msg := map[AllDisabled]string{
			Panic:   "every router of the pool is disabled; sending calls to the one whose disable ends soonest (panic mode)",
			Ingress: "every router of the pool is disabled; calls stay on the ingress router's own outbound",
			Any:     "every router of the pool is disabled; choosing among all of them",
		}[p.tab.policy.AllDisabled]
		if len(c.fallback) == 0 && p.tab.policy.AllDisabled != Ingress {
			msg = "every router of the pool is disabled by hand; calls stay on the ingress router's own outbound"
		}
		b.log.Warn(msg, slog.String("ingress", p.ingress))
	case len(c.tiers) > 0 && p.stranded:
		p.stranded = false
		b.log.Info("pool has an enabled router again", slog.String("ingress", p.ingress))
	}
}

// snapshot builds p's choice from the views at now. b.mu must be held
// (or, in New, nothing else may run yet).
func (b *Broker) snapshot(p *pool, now time.Time) *choice {
	if p.budget != nil && p.budget.spentUntil() > now.UnixNano() {
		// The pool's budget is spent: no router takes its calls, which
		// stay on the ingress router's own outbound.
		return &choice{spent: true, poolSpent: true}
	}
	c := &choice{}
	all := 0
	soonest := -1
	spentSoonest := -1 // of the routers out for their budget, the one back first
	tiers := map[int]*Tier{}
	for i, r := range p.routers {
		rt := p.routes[i]
		ph := phase(rt.live, now)
		if until := rt.spentUntil(); ph == Enabled && until > now.UnixNano() {
			if spentSoonest < 0 || until < p.routes[spentSoonest].spentUntil() {
				spentSoonest = i
			}
			continue // out for its budget: neither chosen nor a fallback
		}
		if rt.probe != nil && rt.probe.token.Load() {
			c.probes = append(c.probes, rt.probe)
		}
		if ph == Probation && b.shared() != nil && !rt.pending &&
			(rt.live.Probe == nil || !now.Before(rt.live.Probe.Until)) {
			c.unclaimed = append(c.unclaimed, rt)
		}
		if ph != Manual {
			all += r.Weight
			c.fallback = append(c.fallback, rt)
			c.fallbackCum = append(c.fallbackCum, all)
			c.fallbackIdx = append(c.fallbackIdx, i)
			if ph != Enabled && (soonest < 0 || rt.live.Until.Before(p.routes[soonest].live.Until)) {
				soonest = i
			}
		}
		if ph != Enabled {
			continue
		}
		t := tiers[r.Priority]
		if t == nil {
			t = &Tier{}
			tiers[r.Priority] = t
			c.tiers = append(c.tiers, t)
		}
		total := r.Weight
		if n := len(t.cum); n > 0 {
			total += t.cum[n-1]
		}
		t.routes = append(t.routes, rt)
		t.seeds = append(t.seeds, rt.seed)
		t.equal = len(t.weights) == 0 || t.equal && t.weights[0] == r.Weight
		t.weights = append(t.weights, r.Weight)
		t.cum = append(t.cum, total)
		t.index = append(t.index, i)
	}
	slices.SortFunc(c.tiers, func(a, b *Tier) int { return p.routers[a.index[0]].Priority - p.routers[b.index[0]].Priority })
	m := p.takeMix()
	for _, t := range c.tiers {
		t.setCosts(m)
	}
	p.mix.Store(m)
	if len(c.tiers) == 0 && spentSoonest >= 0 {
		// Every router that is not out for its budget is disabled: the
		// pool's rule for a spent budget answers, not the all-disabled
		// mode.
		c.spent = true
		c.fallback, c.fallbackCum, c.fallbackIdx = nil, nil, nil
		if p.soonest {
			c.fallback = []*route{p.routes[spentSoonest]}
			c.fallbackCum = []int{1}
			c.fallbackIdx = []int{spentSoonest}
		}
		return c
	}
	switch p.tab.policy.AllDisabled {
	case Ingress:
		c.fallback, c.fallbackCum, c.fallbackIdx = nil, nil, nil
	case Panic:
		c.fallback, c.fallbackCum, c.fallbackIdx = nil, nil, nil
		if soonest >= 0 {
			c.fallback = []*route{p.routes[soonest]}
			c.fallbackCum = []int{1}
			c.fallbackIdx = []int{soonest}
		}
	}
	return c
}
