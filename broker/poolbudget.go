package broker

// A pool's budget: what the calls made through its ingress may use per
// period, counted from gecholog's transaction log by the ingress each call
// names (request.original_gl_path), whichever router it went to. Like a
// router's budget, every replica counts the same calls and takes the pool
// out at the same call; a pool out for its budget has no router for its
// calls, which stay on the ingress router's own outbound until its period
// resets.

import (
	"fmt"
	"log/slog"
	"time"
)

// poolBudget is a pool's budget and what its calls used. It outlives a
// configuration: a pool given the same ingress again keeps its counts.
type poolBudget struct {
	ingress string
	budgetState
	calls usageCounts // the pool's calls whose tokens were counted, for its average call
}

// validateBudget says what is wrong with p's budget, naming the pool; a
// spend cap needs a price for every router of the pool, given by any
// pool.
func (p Pool) validateBudget(pools []Pool) error {
	if p.Budget == nil {
		return nil
	}
	if err := p.Budget.validate(true); err != nil {
		return fmt.Errorf("pool %q: %w", p.Ingress, err)
	}
	if p.Budget.SpendPerDay == 0 && p.Budget.SpendPerMonth == 0 {
		return nil
	}
	for _, r := range p.Routers {
		if r.Price == nil && priceOf(pools, r.Path) == nil {
			return fmt.Errorf(`pool %q: budget: it caps spend, but router %q has no price, so what a call to it costs is not known; give it one, per million tokens: "price": {"input": 2.5, "output": 10}`, p.Ingress, r.Path)
		}
	}
	return nil
}

// setBudgets gives each pool of t its budget, reusing what the pool of the
// same ingress counted before. b.mu must be held (or, in New, nothing else
// may run yet).
func (b *Broker) setBudgets(t *table, pools []Pool) {
	for _, pc := range pools {
		p := t.pools[pc.Ingress]
		if pc.Budget == nil {
			if pb := b.spends[pc.Ingress]; pb != nil {
				pb.budget.Store(nil)
				pb.spent.Store(&spent{})
			}
			continue
		}
		pb := b.spends[pc.Ingress]
		if pb == nil {
			pb = &poolBudget{ingress: pc.Ingress}
			b.spends[pc.Ingress] = pb
		}
		loc, _ := pc.Budget.location() // validated
		pb.budget.Store(&budgetConfig{Budget: *pc.Budget, loc: loc})
		p.budget = pb
		s := p.spentAt(time.Now())
		pb.spent.Store(&s)
	}
}

// spentAt says whether p's budget keeps it out at now: its calls in flight
// are those of its routers (calls another pool sent them included, which
// can take the pool out early, never late), at the pool's average call.
func (p *pool) spentAt(now time.Time) spent {
	var inFlight int64
	for _, rt := range p.routes {
		inFlight += rt.stats.inFlight()
	}
	return p.budget.spentAt(now, float64(inFlight), p.budget.calls.snapshot())
}

// checkPoolBudget takes p out when its budget is spent at now, and back in
// when the period that spent it is over.
func (b *Broker) checkPoolBudget(p *pool, now time.Time) {
	if p.budget == nil {
		return
	}
	b.recheck(&p.budget.budgetState, p.spentAt(now), now, []*pool{p}, slog.String("pool", p.ingress), "pool")
}

// countPoolBudget counts a call made through ingress, heard at now, of
// tokens (counted says they were: u said them, within bounds) that cost
// spend, against the
// budget of the pool of ingress, and takes the pool out when that spends
// it. A call through no pool's ingress, or a pool's without a budget,
// counts nowhere.
func (b *Broker) countPoolBudget(ingress []byte, now time.Time, counted bool, u Usage, tokens int64, spend float64) {
	if len(ingress) == 0 {
		return
	}
	p := b.cur().pools[string(ingress)] // does not allocate
	if p == nil || p.budget == nil {
		return
	}
	g := p.budget.budget.Load()
	if g == nil {
		return
	}
	if counted {
		p.budget.calls.count(u, spend)
	}
	p.budget.use.add(now, g.loc, tokens, spend)
	b.checkPoolBudget(p, now)
}

// spentWhy is when p, out for its spent budget at now, takes calls again,
// and why it is out; zero when it is not.
func (p *pool) spentWhy(now time.Time) (time.Time, string) {
	if p.budget == nil {
		return time.Time{}, ""
	}
	s := p.budget.spent.Load()
	g := p.budget.budget.Load()
	if s.untilNs() <= now.UnixNano() || g == nil {
		return time.Time{}, ""
	}
	return s.until, s.why(g.loc)
}
