package broker_test

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/testutil/clocktest"
)

// budgetPool is /b/ over r0 (tier 0, budget g, priced) and r1 (tier
// tier1, priced, no budget).
func budgetPool(g broker.Budget, tier1 int) broker.Pool {
	price := &broker.Price{Input: 1, Output: 2, CachedInput: 1}
	return broker.Pool{Ingress: "/b/", Routers: []broker.Router{
		{Path: "/b/r0/", Weight: 1, Price: price, Budget: &g},
		{Path: "/b/r1/", Weight: 1, Priority: tier1, Price: price}}}
}

// heardCall tells b of a finished call of router that used tokens (input
// only), as the transaction log does.
func heardCall(t *testing.T, b *broker.Broker, router string, tokens int64) {
	t.Helper()
	if err := b.Used([]byte(router), broker.Usage{State: broker.UsageKnown, Input: tokens}); err != nil {
		t.Fatal(err)
	}
}

// state is router's state in b's explanation of /b/ at now, and why.
func state(b *broker.Broker, router string, now time.Time) (string, string) {
	e, _ := b.Explain("/b/", now)
	for _, r := range e.Routers {
		if r.Router == router {
			return r.State, r.Why
		}
	}
	return "", ""
}

func TestARouterWhoseTokenBudgetIsSpentIsOutUntilTheMinuteEnds(t *testing.T) {
	clocktest.MinuteToSpare(t, 10*time.Second) // a per-minute budget spent, then looked at: no minute (or day) may turn between
	is := is.New(t)
	b, logs := newBroker(t, broker.Config{Pools: []broker.Pool{budgetPool(broker.Budget{TokensPerMinute: 10_000}, 1)}})
	start := time.Now()
	for range 9 {
		heardCall(t, b, "/b/r0/", 1000)
	}
	is.Equal(settled(b, "/b/", nil), "/b/r0/") // 9,000 of 10,000: still in, tier 0 takes the calls
	heardCall(t, b, "/b/r0/", 1000)
	if time.Now().Truncate(time.Minute) != start.Truncate(time.Minute) {
		t.Skip("a minute began during the test: the calls counted in two periods")
	}
	for range 20 {
		is.Equal(settled(b, "/b/", nil), "/b/r1/") // spent: tier 1 takes the calls
	}
	st, why := state(b, "/b/r0/", time.Now())
	t.Log(why)
	is.Equal(st, "budget")
	is.True(strings.Contains(why, "tokens_per_minute spent (10000 of 10000 used)"))
	is.True(logs.count("router out for its budget") > 0)
	is.Equal(b.Phase("/b/r0/"), broker.Enabled) // not a failure: nothing disabled, no backoff, no probe
	next := start.Truncate(time.Minute).Add(time.Minute)
	b.Refresh(next.Add(-time.Millisecond)) // not yet
	is.Equal(settled(b, "/b/", nil), "/b/r1/")
	b.Refresh(next)                            // the minute is over
	is.Equal(settled(b, "/b/", nil), "/b/r0/") // back in at once, without a probe
	is.True(logs.count("router back from its budget") > 0)
}

func TestARequestBudgetCountsEveryCallAndTheCallsInFlight(t *testing.T) {
	clocktest.MinuteToSpare(t, 10*time.Second) // a per-minute budget spent, then looked at: no minute (or day) may turn between
	is := is.New(t)
	b, _ := newBroker(t, broker.Config{Pools: []broker.Pool{budgetPool(broker.Budget{RequestsPerMinute: 10}, 0)}})
	is.NoErr(b.Used([]byte("/b/r0/"), broker.Usage{State: broker.UsageUnknown})) // tokens not said: a request all the same
	for range 5 {
		heardCall(t, b, "/b/r0/", 10)
	}
	// Four calls of r0 chosen, not yet heard of: 6 counted + 4 in flight.
	inFlight := 0
	for inFlight < 4 {
		if choose(b, "/b/", nil) == "/b/r0/" {
			inFlight++
		}
	}
	b.Refresh(time.Now())
	st, why := state(b, "/b/r0/", time.Now())
	t.Log(why)
	is.Equal(st, "budget") // what its calls in flight will use is counted now
	is.True(strings.Contains(why, "the rest taken by the calls in flight"))
	for range 20 {
		is.Equal(choose(b, "/b/", nil), "/b/r1/")
	}
}

func TestASpendBudgetSpillsToTheNextTierAndBackAtMidnightInItsTimeZone(t *testing.T) {
	is := is.New(t)
	g := broker.Budget{SpendPerDay: 0.01, TimeZone: "Pacific/Auckland"} // 10,000 input tokens at 1 per million
	b, _ := newBroker(t, broker.Config{Pools: []broker.Pool{budgetPool(g, 1)}})
	now := time.Now()
	heardCall(t, b, "/b/r0/", 10_000)
	is.Equal(settled(b, "/b/", nil), "/b/r1/") // spent: the next tier
	st, why := state(b, "/b/r0/", now)
	t.Log(why)
	is.Equal(st, "budget")
	loc, _ := time.LoadLocation("Pacific/Auckland")
	y, m, d := now.In(loc).Date()
	midnight := time.Date(y, m, d+1, 0, 0, 0, 0, loc)
	is.True(strings.Contains(why, "back at "+midnight.Format("2006-01-02 15:04:05 MST")))
	b.Refresh(midnight.Add(-time.Second))
	is.Equal(settled(b, "/b/", nil), "/b/r1/")
	b.Refresh(midnight)
	is.Equal(settled(b, "/b/", nil), "/b/r0/") // a new day where the budget's day begins
}

func TestAPoolWithEveryRouterSpentFollowsItsRule(t *testing.T) {
	clocktest.MinuteToSpare(t, 10*time.Second) // a per-minute budget spent, then looked at: no minute (or day) may turn between
	is := is.New(t)
	price := &broker.Price{Input: 1, Output: 2, CachedInput: 1}
	pool := func(rule string) broker.Pool {
		return broker.Pool{Ingress: "/b/", BudgetSpent: rule, Routers: []broker.Router{
			{Path: "/b/r0/", Weight: 1, Price: price, Budget: &broker.Budget{SpendPerDay: 0.001}},
			{Path: "/b/r1/", Weight: 1, Price: price, Budget: &broker.Budget{TokensPerMinute: 100}}}}
	}
	for _, tc := range []struct {
		rule, want string
		explained  broker.Rule
	}{{"", "", broker.SpentIngressRule}, {broker.BudgetIngress, "", broker.SpentIngressRule}, {broker.BudgetSoonest, "/b/r1/", broker.SpentSoonestRule}} {
		b, logs := newBroker(t, broker.Config{Pools: []broker.Pool{pool(tc.rule)}})
		heardCall(t, b, "/b/r0/", 1000) // its day's spend
		heardCall(t, b, "/b/r1/", 1000) // its minute's tokens: back first
		for range 10 {
			is.Equal(choose(b, "/b/", nil), tc.want) // "": stays on the ingress router
		}
		is.True(logs.count("every router of the pool is out for its budget or disabled") > 0)
		e, _ := b.Explain("/b/", time.Now())
		t.Logf("%q: %s: %s", tc.rule, e.Rule, e.Why)
		is.Equal(e.Rule, tc.explained) // the explanation says the rule that answers
		for _, r := range e.Routers {
			is.Equal(r.State, "budget")
			is.Equal(r.Expected > 0, r.Router == tc.want) // and where the calls go
		}
	}
}

func TestABudgetThatCannotBeIsRefusedSayingWhy(t *testing.T) {
	price := &broker.Price{Input: 1, Output: 2}
	for _, tc := range []struct {
		name   string
		budget broker.Budget
		price  *broker.Price
		rule   string
		want   string
	}{
		{"negative", broker.Budget{TokensPerMinute: -1}, price, "", "budget.tokens_per_minute -1"},
		{"absurd", broker.Budget{RequestsPerMinute: 1 << 60}, price, "", "budget.requests_per_minute"},
		{"not a number", broker.Budget{SpendPerDay: math.NaN()}, price, "", "budget.spend_per_day NaN"},
		{"infinite", broker.Budget{SpendPerMonth: math.Inf(1)}, price, "", "budget.spend_per_month"},
		{"spend without a price", broker.Budget{SpendPerDay: 5}, nil, "", "the router has no price"},
		{"nothing", broker.Budget{TimeZone: "UTC"}, price, "", "caps nothing"},
		{"a zone that is none", broker.Budget{SpendPerDay: 5, TimeZone: "Mars/Olympus_Mons"}, price, "", `budget.time_zone "Mars/Olympus_Mons": not a time zone`},
		{"the machine's zone", broker.Budget{SpendPerDay: 5, TimeZone: "Local"}, price, "", `budget.time_zone "Local"`},
		{"a rule that is none", broker.Budget{TokensPerMinute: 5}, price, "wait", `budget_spent "wait"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := broker.Pool{Ingress: "/b/", BudgetSpent: tc.rule, Routers: []broker.Router{{Path: "/b/r0/", Weight: 1, Price: tc.price, Budget: &tc.budget}}}
			err := broker.ValidatePools([]broker.Pool{p})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error saying %q", err, tc.want)
			}
			t.Log(err)
		})
	}
	is := is.New(t)
	a := budgetPool(broker.Budget{TokensPerMinute: 10}, 0)
	c := budgetPool(broker.Budget{TokensPerMinute: 20}, 0)
	c.Ingress = "/c/"
	err := broker.ValidatePools([]broker.Pool{a, c})
	is.True(err != nil && strings.Contains(err.Error(), "a router has one budget")) // two pools, two budgets for one router
	c.Routers[0].Budget = &broker.Budget{TokensPerMinute: 10}
	is.NoErr(broker.ValidatePools([]broker.Pool{a, c})) // the same budget twice is one
}

func TestACountFromTheStoreIsMergedByTheLargestAndRefusedOutOfBounds(t *testing.T) {
	is := is.New(t)
	g := broker.Budget{TokensPerMinute: 1e9, SpendPerDay: 100, TimeZone: "Europe/Stockholm"}
	b, _ := newBroker(t, broker.Config{Pools: []broker.Pool{budgetPool(g, 0)}})
	now := time.Now()
	heardCall(t, b, "/b/r0/", 1000)
	mine := b.BudgetCounts()[0]
	loc, _ := time.LoadLocation("Europe/Stockholm")
	y, m, d := now.In(loc).Date()
	today := time.Date(y, m, d, 0, 0, 0, 0, loc)

	// Another replica counted more of today, less of this minute.
	other := mine
	other.Day = broker.Used{Start: today, Tokens: 5000, Requests: 5, Spend: 0.005}
	other.Minute = broker.Used{Start: mine.Minute.Start, Tokens: 10, Requests: 1}
	is.NoErr(b.MergeBudget(other, now))
	got := b.BudgetCounts()[0]
	is.Equal(got.Day.Tokens, int64(5000))           // the larger
	is.Equal(got.Minute.Tokens, mine.Minute.Tokens) // its own, larger
	// A period before this one is over: not taken.
	old := got
	old.Day = broker.Used{Start: today.AddDate(0, 0, -1), Tokens: 1 << 40, Requests: 1, Spend: 99}
	is.NoErr(b.MergeBudget(old, now))
	is.Equal(b.BudgetCounts()[0].Day.Tokens, int64(5000))

	for name, bad := range map[string]broker.Used{
		"not a day's start":   {Start: today.Add(time.Hour), Tokens: 1},
		"a day to come":       {Start: today.AddDate(0, 0, 2), Tokens: 1},
		"negative":            {Start: today, Tokens: -1},
		"beyond 2^53":         {Start: today, Requests: broker.MaxBudgetCount + 1},
		"a spend that is NaN": {Start: today, Spend: math.NaN()},
	} {
		c := got
		c.Day = bad
		err := b.MergeBudget(c, now)
		if !errors.Is(err, broker.ErrBudgetCountOutOfBounds) {
			t.Errorf("%s: got %v, want it refused", name, err)
		}
	}
	is.True(b.BudgetCounts()[0].Day.Equal(got.Day)) // nothing of them taken
	// A count that spends the budget takes the router out at once.
	spent := got
	spent.Day = broker.Used{Start: today, Tokens: 1, Requests: 1, Spend: 100}
	is.NoErr(b.MergeBudget(spent, now))
	is.Equal(settled(b, "/b/", nil), "/b/r1/")
}

func TestAMonthlySpendBudgetIsBackOnTheFirstOfTheNextMonthInItsTimeZone(t *testing.T) {
	is := is.New(t)
	g := broker.Budget{SpendPerMonth: 0.01, TimeZone: "America/Los_Angeles"} // 10,000 input tokens at 1 per million
	b, _ := newBroker(t, broker.Config{Pools: []broker.Pool{budgetPool(g, 1)}})
	now := time.Now()
	heardCall(t, b, "/b/r0/", 10_000)
	is.Equal(settled(b, "/b/", nil), "/b/r1/") // spent: the next tier
	loc, _ := time.LoadLocation("America/Los_Angeles")
	y, m, _ := now.In(loc).Date()
	next := time.Date(y, m+1, 1, 0, 0, 0, 0, loc)
	st, why := state(b, "/b/r0/", now)
	is.Equal(st, "budget")
	is.True(strings.Contains(why, "budget spend_per_month spent")) // which cap
	is.True(strings.Contains(why, "back at "+next.Format("2006-01-02 15:04:05 MST")))
	b.Refresh(next.Add(-time.Second))
	is.Equal(settled(b, "/b/", nil), "/b/r1/")
	b.Refresh(next)
	is.Equal(settled(b, "/b/", nil), "/b/r0/") // a new month where the budget's month begins
}
