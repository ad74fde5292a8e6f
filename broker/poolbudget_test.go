package broker_test

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/testutil/clocktest"
)

// pooledBudget is /p/ over r0 and r1, priced, with the pool's budget g and
// budget_spent rule.
func pooledBudget(g broker.Budget, rule string) broker.Pool {
	price := &broker.Price{Input: 1, Output: 2, CachedInput: 1}
	return broker.Pool{Ingress: "/p/", BudgetSpent: rule, Budget: &g, Routers: []broker.Router{
		{Path: "/p/r0/", Weight: 1, Price: price},
		{Path: "/p/r1/", Weight: 1, Price: price}}}
}

// heardThrough tells b of a finished call made through ingress that went
// to router and used tokens (input only), as the transaction log does.
func heardThrough(t *testing.T, b *broker.Broker, ingress, router string, tokens int64) {
	t.Helper()
	if err := b.UsedIn([]byte(ingress), []byte(router), broker.Usage{State: broker.UsageKnown, Input: tokens}); err != nil {
		t.Fatal(err)
	}
}

func TestAPoolWhoseBudgetIsSpentLeavesItsCallsOnTheIngressWhateverItsRule(t *testing.T) {
	clocktest.MinuteToSpare(t, 10*time.Second) // a per-minute budget spent, then looked at: no minute (or day) may turn between
	for _, rule := range []string{"", broker.BudgetIngress, broker.BudgetSoonest} {
		t.Run(rule, func(t *testing.T) {
			is := is.New(t)
			b, logs := newBroker(t, broker.Config{Pools: []broker.Pool{pooledBudget(broker.Budget{TokensPerMinute: 10_000}, rule)}})
			start := time.Now()
			for range 4 {
				heardThrough(t, b, "/p/", "/p/r0/", 1000)
				heardThrough(t, b, "/p/", "/p/r1/", 1000)
			}
			heardThrough(t, b, "/elsewhere/", "/p/r1/", 5000) // through another ingress: not the pool's
			heardThrough(t, b, "", "/p/r1/", 5000)            // through none said
			is.True(settled(b, "/p/", nil) != "")             // 8,000 of 10,000: the pool takes calls
			heardThrough(t, b, "/p/", "/p/", 2000)            // a call left on the ingress router counts too
			if time.Now().Truncate(time.Minute) != start.Truncate(time.Minute) {
				t.Skip("a minute began during the test: the calls counted in two periods")
			}
			for range 20 {
				is.Equal(choose(b, "/p/", nil), "") // spent: the calls stay on the ingress router
			}
			is.True(logs.count("pool out for its budget") > 0)
			e, _ := b.Explain("/p/", time.Now())
			t.Log(e.Why)
			is.Equal(e.Rule, broker.PoolSpentRule)
			is.True(strings.Contains(e.Why, "tokens_per_minute spent (10000 of 10000 used)"))
			for _, r := range e.Routers {
				is.Equal(r.State, "budget")      // healthy, out with its pool
				is.Equal(r.Expected, float64(0)) // no calls
			}
			is.Equal(b.Phase("/p/r0/"), broker.Enabled) // not a failure
			next := start.Truncate(time.Minute).Add(time.Minute)
			b.Refresh(next.Add(-time.Millisecond))
			is.Equal(choose(b, "/p/", nil), "")
			b.Refresh(next) // the minute is over
			is.True(settled(b, "/p/", nil) != "")
			is.True(logs.count("pool back from its budget") > 0)
		})
	}
}

func TestAPoolBudgetCountsSpendAtEachRoutersPriceAndTheCallsInFlight(t *testing.T) {
	is := is.New(t)
	cheap, dear := &broker.Price{Input: 1, Output: 1}, &broker.Price{Input: 10, Output: 10}
	p := broker.Pool{Ingress: "/p/", Budget: &broker.Budget{SpendPerDay: 0.05, RequestsPerMinute: 1000}, Routers: []broker.Router{
		{Path: "/p/cheap/", Weight: 1, Price: cheap}, {Path: "/p/dear/", Weight: 1, Price: dear}}}
	b, _ := newBroker(t, broker.Config{Pools: []broker.Pool{p}})
	heardThrough(t, b, "/p/", "/p/cheap/", 10_000) // 0.01
	heardThrough(t, b, "/p/", "/p/dear/", 2_000)   // 0.02
	var spend float64
	for _, s := range b.Budgets(time.Now()) {
		if s.Pool == "/p/" && s.Kind == broker.SpendPerDay {
			spend = s.Used
		}
	}
	is.True(math.Abs(spend-0.03) < 1e-12) // each call at its router's price
	is.True(choose(b, "/p/", nil) != "")  // 0.03 of 0.05, and one call in flight at the average 0.015
	for range 2 {
		is.True(choose(b, "/p/", nil) != "")
	}
	b.Refresh(time.Now()) // three in flight at 0.015: 0.075 coming
	is.Equal(choose(b, "/p/", nil), "")
	e, _ := b.Explain("/p/", time.Now())
	t.Log(e.Why)
	is.True(strings.Contains(e.Why, "the rest taken by the calls in flight"))
}

func TestAPoolBudgetComesBackWithItsCountsThroughAReconfiguration(t *testing.T) {
	clocktest.MinuteToSpare(t, 10*time.Second) // a per-minute budget spent, then looked at: no minute (or day) may turn between
	is := is.New(t)
	g := broker.Budget{TokensPerMinute: 1e9, RequestsPerMinute: 3}
	b, _ := newBroker(t, broker.Config{Pools: []broker.Pool{pooledBudget(g, "")}})
	start := time.Now()
	heardThrough(t, b, "/p/", "/p/r0/", 10)
	heardThrough(t, b, "/p/", "/p/r0/", 10)
	counts := b.BudgetCounts()
	is.Equal(len(counts), 1)
	is.Equal(counts[0].Pool, "/p/") // a pool's count, named by its ingress
	is.Equal(counts[0].Router, "")
	is.Equal(counts[0].Minute.Requests, int64(2))
	p := pooledBudget(g, "")
	p.Routers = append(p.Routers, broker.Router{Path: "/p/r2/", Weight: 1, Price: &broker.Price{Input: 1}})
	is.NoErr(b.Reconfigure([]broker.Pool{p}, broker.Policy{DisabledTime: time.Hour}, 0))
	is.Equal(b.BudgetCounts()[0].Minute.Requests, int64(2)) // kept
	heardThrough(t, b, "/p/", "/p/r2/", 10)
	if time.Now().Truncate(time.Minute) != start.Truncate(time.Minute) {
		t.Skip("a minute began during the test: the calls counted in two periods")
	}
	is.Equal(choose(b, "/p/", nil), "") // 3 of 3
	p.Budget = nil
	is.NoErr(b.Reconfigure([]broker.Pool{p}, broker.Policy{DisabledTime: time.Hour}, 0))
	is.True(choose(b, "/p/", nil) != "") // the budget gone: the pool is in
	is.Equal(len(b.BudgetCounts()), 0)
}

func TestAPoolCountFromTheStoreIsMergedAndRefusedOutOfBounds(t *testing.T) {
	is := is.New(t)
	b, _ := newBroker(t, broker.Config{Pools: []broker.Pool{pooledBudget(broker.Budget{TokensPerMinute: 10_000}, "")}})
	now := time.Now()
	minute := now.Truncate(time.Minute)
	is.NoErr(b.MergeBudget(broker.BudgetCount{Pool: "/p/", Minute: broker.Used{Start: minute, Tokens: 9000, Requests: 9}}, now))
	is.Equal(b.BudgetCounts()[0].Minute.Tokens, int64(9000))
	err := b.MergeBudget(broker.BudgetCount{Pool: "/p/", Minute: broker.Used{Start: minute, Tokens: -1}}, now)
	is.True(err != nil && strings.Contains(err.Error(), "pool /p/")) // refused, naming the pool
	is.NoErr(b.MergeBudget(broker.BudgetCount{Pool: "/nopool/", Minute: broker.Used{Start: minute, Tokens: 1}}, now))
	is.NoErr(b.MergeBudget(broker.BudgetCount{Pool: "/p/", Minute: broker.Used{Start: minute, Tokens: 10_000, Requests: 10}}, now))
	if time.Now().Truncate(time.Minute) == minute {
		is.Equal(choose(b, "/p/", nil), "") // the fleet's count spends it here too
	}
}

func TestAPoolBudgetThatCannotBeIsRefusedSayingWhy(t *testing.T) {
	price := &broker.Price{Input: 1, Output: 2}
	for _, tc := range []struct {
		name   string
		budget broker.Budget
		price  *broker.Price
		want   string
	}{
		{"negative", broker.Budget{TokensPerMinute: -1}, price, `pool "/p/": budget.tokens_per_minute -1`},
		{"absurd", broker.Budget{RequestsPerMinute: 1 << 60}, price, `pool "/p/": budget.requests_per_minute`},
		{"not a number", broker.Budget{SpendPerDay: math.NaN()}, price, `pool "/p/": budget.spend_per_day NaN`},
		{"infinite", broker.Budget{SpendPerMonth: math.Inf(1)}, price, `pool "/p/": budget.spend_per_month`},
		{"spend without a router's price", broker.Budget{SpendPerDay: 5}, nil, `pool "/p/": budget: it caps spend, but router "/p/r1/" has no price`},
		{"nothing", broker.Budget{TimeZone: "UTC"}, price, `pool "/p/": budget: caps nothing`},
		{"a zone that is none", broker.Budget{SpendPerDay: 5, TimeZone: "Mars/Olympus_Mons"}, price, `pool "/p/": budget.time_zone "Mars/Olympus_Mons": not a time zone`},
		{"the machine's zone", broker.Budget{TokensPerMinute: 5, TimeZone: "Local"}, price, `budget.time_zone "Local"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := broker.Pool{Ingress: "/p/", Budget: &tc.budget, Routers: []broker.Router{
				{Path: "/p/r0/", Weight: 1, Price: price}, {Path: "/p/r1/", Weight: 1, Price: tc.price}}}
			err := broker.ValidatePools([]broker.Pool{p})
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("got %v, want one line saying %q", err, tc.want)
			}
			t.Log(err)
		})
	}
	is := is.New(t)
	p := pooledBudget(broker.Budget{SpendPerDay: 5}, "")
	p.Routers[1].Price = nil
	other := broker.Pool{Ingress: "/o/", Routers: []broker.Router{{Path: "/p/r1/", Weight: 1, Price: &broker.Price{Input: 3}}}}
	is.NoErr(broker.ValidatePools([]broker.Pool{p, other})) // a price another pool gives the router is its price
}

func TestCountingACallThroughAPoolWithABudgetAllocatesNothing(t *testing.T) {
	b, _ := newBroker(t, broker.Config{Pools: []broker.Pool{pooledBudget(broker.Budget{TokensPerMinute: 1e12, SpendPerDay: 1e9}, "")}})
	ingress, router := []byte("/p/"), []byte("/p/r0/")
	u := broker.Usage{State: broker.UsageKnown, Input: 10, Output: 10}
	if n := testing.AllocsPerRun(100, func() { _ = b.UsedIn(ingress, router, u) }); n != 0 {
		t.Errorf("%v allocations per call heard through a pool with a budget, want none", n)
	}
}
