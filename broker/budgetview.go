package broker

// The budgets in the explanation: a router out for its budget, and the
// pool's rule when every healthy router is.

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
