package broker

// The budgets in the explanation: a router out for its budget, the
// pool's rule when every healthy router is, and a pool out for its own.

// takesCalls reports whether v is enabled and not out for its budget.
func (v RouterView) takesCalls() bool { return v.Phase == Enabled && !v.spent() }

// spent reports whether v is out for its budget, and healthy.
func (v RouterView) spent() bool { return v.Phase == Enabled && !v.BudgetUntil.IsZero() }

// budgetSpent sets the rule and shares of a pool whose healthy routers
// are all out for their budget, as Choose's snapshot has it.
func (e *Explanation) budgetSpent(p PoolView) {
	e.Rule = SpentIngressRule
	if p.BudgetSpent != BudgetSoonest {
		return
	}
	e.Rule = SpentSoonestRule
	soonest := -1
	for i, v := range p.Routers {
		if v.spent() && (soonest < 0 || v.BudgetUntil.Before(p.Routers[soonest].BudgetUntil)) {
			soonest = i
		}
	}
	e.Routers[soonest].Expected = 1
}

// poolSpent makes e say that p is out for its own budget: no router gets
// a call, whatever would answer them otherwise.
func (e *Explanation) poolSpent(p PoolView) {
	e.Rule, e.Tier = PoolSpentRule, -1
	e.Why = "the pool is out for its own budget: " + p.BudgetWhy + "; its calls stay on the ingress router's own outbound until then, whatever budget_spent says"
	for i := range e.Routers {
		r := &e.Routers[i]
		r.Expected = 0
		if r.Phase == Enabled {
			r.State, r.Reads = "budget", "" // healthy, and out with its pool
		}
		r.Why += "; its pool is out for the pool's budget"
	}
}
