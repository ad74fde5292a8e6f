package broker

// What a call costs on each router of a pool: the routers' prices applied
// to the pool's average call, computed off the request's path (when a
// snapshot of the pool is built, and at each Refresh after calls were
// heard) and read on it with an atomic load.

import (
	"cmp"
	"math"
	"slices"
)

// TokenMix is the tokens of one average call, by kind.
type TokenMix struct {
	Input, CachedInput, Output float64
}

// DefaultTokenMix is the average call a pool's routers are priced by
// until a call of any of them is heard with its tokens: 750 input tokens
// and 250 output, 3 to 1, as a chat call's prompt (history, system
// prompt, documents) usually outweighs its answer.
var DefaultTokenMix = TokenMix{Input: 750, Output: 250}

// PerCall is what a call of mix m costs at p, in p's currency.
func (p Price) PerCall(m TokenMix) float64 {
	return (m.Input*p.Input + m.CachedInput*p.CachedInput + m.Output*p.Output) / 1e6
}

// poolMix is a pool's average call, as its routers' counts said at one
// moment; immutable.
type poolMix struct {
	TokenMix
	// calls counts the calls whose tokens were counted over the pool's
	// routers when it was taken; 0: none, and TokenMix is the default.
	calls uint64
}

// takeMix takes p's average call from its routers' counts (every call
// heard of any of them, whichever pool or client sent it, since the
// replica started); it makes a new one only when calls were counted
// since the last stored in p.mix. The caller prices p's tiers at it,
// then stores it: so what PoolView says of the mix, Pick already reads.
func (p *pool) takeMix() *poolMix {
	var calls uint64
	for _, rt := range p.routes {
		calls += rt.stats.use.counted.Load()
	}
	if m := p.mix.Load(); m != nil && m.calls == calls {
		return m
	}
	m := &poolMix{TokenMix: DefaultTokenMix, calls: calls}
	if calls > 0 {
		// Read after the calls: a call counted in between adds its
		// tokens here and its count at the next refresh, which then
		// takes the mix again.
		var in, cached, out int64
		for _, rt := range p.routes {
			in += rt.stats.use.input.Load()
			cached += rt.stats.use.cached.Load()
			out += rt.stats.use.output.Load()
		}
		n := float64(calls)
		m.TokenMix = TokenMix{Input: float64(in) / n, CachedInput: float64(cached) / n, Output: float64(out) / n}
	}
	return m
}

// tierCosts are what one call costs on each router of a tier at one mix,
// and the routers from the cheapest to the dearest; immutable.
type tierCosts struct {
	mix    *poolMix
	cost   []float64 // by index in the tier; +Inf: no price
	priced []bool
	order  []int // indexes in the tier, cheapest first, ties in the tier's order
}

// setCosts prices t's routers at m. A tier none of whose routers has a
// price keeps none: CallCost says so, and Cheapest is the tier's order.
func (t *Tier) setCosts(m *poolMix) {
	c := &tierCosts{mix: m, cost: make([]float64, len(t.routes)), priced: make([]bool, len(t.routes)), order: make([]int, len(t.routes))}
	any := false
	for i, rt := range t.routes {
		c.order[i] = i
		c.cost[i] = math.Inf(1)
		if p := rt.price.Load(); p != nil {
			c.cost[i], c.priced[i], any = p.PerCall(m.TokenMix), true, true
		}
	}
	if !any {
		return
	}
	slices.SortStableFunc(c.order, func(a, b int) int { return cmp.Compare(c.cost[a], c.cost[b]) })
	t.costs.Store(c)
}

// CallCost is what one call to router i is expected to cost: its price
// applied to the average call of the pool (by the tokens of every call
// of the pool's routers heard so far; DefaultTokenMix before any), as
// last computed off the request's path. ok is false when the router has
// no price.
func (t *Tier) CallCost(i int) (cost float64, ok bool) {
	c := t.costs.Load()
	if c == nil || !c.priced[i] {
		return math.Inf(1), false
	}
	return c.cost[i], true
}

// Cheapest is the router k-th cheapest per call (CallCost), k from 0 to
// Len()-1: Cheapest(0) is the cheapest; routers of equal cost in the
// tier's order, and routers without a price last. The order may change
// between two calls, as the pool's mix does.
func (t *Tier) Cheapest(k int) int {
	if c := t.costs.Load(); c != nil {
		return c.order[k]
	}
	return k
}

// priceCalls brings every pool's call costs up to date with the calls
// heard since the last time, for the tiers that have prices.
func (b *Broker) priceCalls() {
	t := b.cur()
	for _, ingress := range t.order {
		p := t.pools[ingress]
		m := p.takeMix()
		for _, tier := range p.live.Load().tiers {
			if c := tier.costs.Load(); c != nil && c.mix != m {
				tier.setCosts(m)
			}
		}
		p.mix.Store(m)
	}
}
