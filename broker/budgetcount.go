package broker

// What the budgets counted: as status and the metrics read it, and as a
// store keeps it across restarts.

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// BudgetState is one cap of a router's or a pool's budget, as a replica
// counts it.
type BudgetState struct {
	// Router is the router whose budget it is; "" for a pool's, whose
	// ingress Pool is.
	Router, Pool string
	Kind         BudgetKind
	// Limit is the cap, Used what the router (or the calls through the
	// pool) used in the current period (tokens, requests, or spend in
	// its price's currency), and Resets when the period ends.
	Limit, Used float64
	Resets      time.Time
	// Out says the router or pool is out for its budget (for this cap or
	// another), until OutUntil.
	Out      bool
	OutUntil time.Time
}

// Budgets returns every cap of the budgets of the routers of the pools in
// force at now, in the order the pools first list the routers, then those
// of the pools' own budgets, in the pools' order.
func (b *Broker) Budgets(now time.Time) []BudgetState {
	var out []BudgetState
	t := b.cur()
	for _, rt := range t.members {
		out = rt.states(out, BudgetState{Router: rt.path}, now)
	}
	for _, ingress := range t.order {
		if pb := t.pools[ingress].budget; pb != nil {
			out = pb.states(out, BudgetState{Pool: ingress}, now)
		}
	}
	return out
}

// states appends each cap of s's budget at now to out, named as who.
func (s *budgetState) states(out []BudgetState, who BudgetState, now time.Time) []BudgetState {
	g := s.budget.Load()
	if g == nil {
		return out
	}
	if until := s.spentUntil(); until > now.UnixNano() {
		who.Out, who.OutUntil = true, time.Unix(0, until)
	}
	for k := range budgetKinds {
		limit := g.limit(k)
		if limit <= 0 {
			continue
		}
		p := k.period()
		u := s.use.in(p, now, g.loc)
		who.Kind, who.Limit, who.Used = k, limit, [...]float64{float64(u.Tokens), float64(u.Requests), u.Spend, u.Spend}[k]
		_, who.Resets = p.bounds(now, g.loc)
		out = append(out, who)
	}
	return out
}

// BudgetCount is what a router used in its current periods (see Used),
// or the calls through a pool, as a store keeps it across restarts.
type BudgetCount struct {
	// Router is the router counted; "" for a pool, whose ingress Pool is.
	Router, Pool       string
	Minute, Day, Month Used
}

// Equal reports whether u and o count the same period alike.
func (u Used) Equal(o Used) bool {
	return u.Start.Equal(o.Start) && u.Tokens == o.Tokens && u.Requests == o.Requests && u.Spend == o.Spend
}

// SameCounts reports whether c and o count the same periods alike.
func (c BudgetCount) SameCounts(o BudgetCount) bool {
	return c.Minute.Equal(o.Minute) && c.Day.Equal(o.Day) && c.Month.Equal(o.Month)
}

// ErrBudgetCountOutOfBounds is a count MergeBudget refuses: a period that
// is not one of the budget's (not its start, or in the future), or a
// count negative, not finite or beyond MaxBudgetCount.
var ErrBudgetCountOutOfBounds = errors.New("a budget count out of bounds (a period that is none of the budget's, or a count negative, not finite or beyond 2^53): not taken")

// BudgetCounts returns what each router with a budget used in its
// current periods, then what the calls through each pool with a budget
// used.
func (b *Broker) BudgetCounts() []BudgetCount {
	var out []BudgetCount
	t := b.cur()
	for _, rt := range t.members {
		if rt.budget.Load() != nil {
			out = append(out, rt.count(BudgetCount{Router: rt.path}))
		}
	}
	for _, ingress := range t.order {
		if pb := t.pools[ingress].budget; pb != nil && pb.budget.Load() != nil {
			out = append(out, pb.count(BudgetCount{Pool: ingress}))
		}
	}
	return out
}

// count is c with what s counted.
func (s *budgetState) count(c BudgetCount) BudgetCount {
	s.use.mu.Lock()
	defer s.use.mu.Unlock()
	c.Minute, c.Day, c.Month = s.use.used[minute], s.use.used[day], s.use.used[month]
	return c
}

// MergeBudget takes a count of c.Router's (or c.Pool's) periods from a
// store, what this replica or another counted before: of a period this
// replica counts too, the larger of each figure; of a newer period (this
// replica counted nothing of it yet, or not since it started), the
// store's. It ignores a router or pool without a budget, and refuses a
// count out of bounds, taking nothing of it.
func (b *Broker) MergeBudget(c BudgetCount, now time.Time) error {
	t := b.cur()
	if c.Router == "" {
		p := t.pools[c.Pool]
		if p == nil || p.budget == nil {
			return nil
		}
		if err := p.budget.merge(c, now); err != nil {
			return fmt.Errorf("pool %s: %w", p.ingress, err)
		}
		b.checkPoolBudget(p, now)
		return nil
	}
	rt := t.routers[c.Router]
	if rt == nil {
		return nil
	}
	if err := rt.merge(c, now); err != nil {
		return fmt.Errorf("router %s: %w", rt.path, err)
	}
	b.checkBudget(rt, now)
	return nil
}

// merge takes c into s's counts (see MergeBudget); nothing without a
// budget.
func (s *budgetState) merge(c BudgetCount, now time.Time) error {
	g := s.budget.Load()
	if g == nil {
		return nil
	}
	in := [periods]Used{c.Minute, c.Day, c.Month}
	for p, u := range in {
		if u.Start.IsZero() {
			continue
		}
		start, _ := period(p).bounds(u.Start, g.loc)
		if !start.Equal(u.Start) || u.Start.After(now.Add(time.Minute)) || u.Tokens < 0 || u.Tokens > MaxBudgetCount ||
			u.Requests < 0 || u.Requests > MaxBudgetCount || math.IsNaN(u.Spend) || u.Spend < 0 || u.Spend > MaxBudgetCount {
			return ErrBudgetCountOutOfBounds
		}
	}
	s.use.mu.Lock()
	defer s.use.mu.Unlock()
	for p, u := range in {
		mine := &s.use.used[p]
		switch {
		case u.Start.IsZero() || u.Start.Before(mine.Start):
		case u.Start.After(mine.Start):
			*mine = u
		default:
			mine.Tokens, mine.Requests, mine.Spend = max(mine.Tokens, u.Tokens), max(mine.Requests, u.Requests), max(mine.Spend, u.Spend)
		}
	}
	return nil
}

// Kinds lists the caps g gives, in the order of BudgetKind.
func (g Budget) Kinds() []BudgetKind {
	var out []BudgetKind
	for k := range budgetKinds {
		if g.limit(k) > 0 {
			out = append(out, k)
		}
	}
	return out
}

// Limit is g's cap of kind k; 0: none.
func (g Budget) Limit(k BudgetKind) float64 { return g.limit(k) }

// Usage returns what c counts of cap k of g in the period holding now (0
// when c counts an earlier period), and when that period ends. g must be
// valid.
func (g Budget) Usage(c BudgetCount, k BudgetKind, now time.Time) (used float64, resets time.Time) {
	loc, err := g.location()
	if err != nil {
		loc = time.UTC
	}
	p := k.period()
	start, end := p.bounds(now, loc)
	u := [periods]Used{c.Minute, c.Day, c.Month}[p]
	if !u.Start.Equal(start) {
		return 0, end
	}
	return [...]float64{float64(u.Tokens), float64(u.Requests), u.Spend, u.Spend}[k], end
}
