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

// poolSpent makes e say that its pool is out for its own budget: no router gets
// a call, whatever would answer them otherwise.
func (e *Explanation) poolSpent() {
	e.Rule, e.Tier = PoolSpentRule, -1
	for i := range e.Routers {
		e.Routers[i].Expected = 0 // an enabled router's view says the pool's budget holds it out
	}
}
