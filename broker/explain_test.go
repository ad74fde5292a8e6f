package broker_test

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
)

// explained finds router's explanation in e.
func explained(t *testing.T, e broker.Explanation, router string) broker.RouterExplanation {
	t.Helper()
	for _, r := range e.Routers {
		if r.Router == router {
			return r
		}
	}
	t.Fatalf("no explanation of %s in %+v", router, e)
	return broker.RouterExplanation{}
}

// sum is the expected shares of e's routers.
func sum(e broker.Explanation) float64 {
	var s float64
	for _, r := range e.Routers {
		s += r.Expected
	}
	return s
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

// The operator's question, "why does gpt4 get no calls?", answered from
// what the replica sees: one router disabled by hand, one disabled on a
// 429 and out of requests, one with a quarter of its rate limit left, one
// whose upstream says nothing, and a router of the next tier.
func TestExplainSaysEachRoutersStateWhyAndShare(t *testing.T) {
	is := is.New(t)
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	reset := now.Add(30 * time.Second)
	p := broker.PoolView{Ingress: "/azure/", Strategy: "headroom", AllDisabled: broker.Panic, Replica: "replica-1",
		Routers: []broker.RouterView{
			{Router: "/azure/gpt4/", Phase: broker.Manual, Weight: 1,
				Record: &broker.Record{Router: "/azure/gpt4/", Manual: true, By: "alice", Reason: "quota review"}},
			{Router: "/azure/dud/", Phase: broker.Disabled, Weight: 1, HeadroomKnown: true, RateLimitedUntil: reset,
				Record: &broker.Record{Router: "/azure/dud/", Status: 429, Reason: "egress_status_code 429, Retry-After 30s",
					By: "replica-2", At: now, Until: reset}},
			{Router: "/azure/gpt35turbo/", Phase: broker.Enabled, Weight: 1, HeadroomKnown: true, Headroom: 0.25, Room: 0.25},
			{Router: "/azure/gpt4o/", Phase: broker.Enabled, Weight: 1},
			{Router: "/azure/backup/", Phase: broker.Enabled, Weight: 5, Priority: 1},
		}}
	e := broker.Explain(p, now)
	is.Equal(e.Rule, broker.ByStrategy) // the strategy answers
	is.Equal(e.Tier, 0)                 // on the best tier
	says(t, "the pool's why", e.Why, "it is the best tier")

	gpt4 := explained(t, e, "/azure/gpt4/")
	is.Equal(gpt4.State, "manual")
	says(t, "gpt4's why", gpt4.Why, "disabled by hand by alice until enabled by hand: quota review")
	is.Equal(gpt4.Expected, 0.0) // no calls
	is.Equal(gpt4.Reads, "")     // the strategy does not ask about it

	dud := explained(t, e, "/azure/dud/")
	is.Equal(dud.State, "disabled")
	is.Equal(dud.Until, reset) // until the Retry-After ends
	says(t, "the dud's why", dud.Why, "disabled until 2026-05-01T12:00:30Z (in 30s) by replica-2: egress_status_code 429, Retry-After 30s")
	says(t, "the dud's why", dud.Why, "its upstream also said no request or token is left until 2026-05-01T12:00:30Z")
	is.Equal(dud.Expected, 0.0)

	gpt35 := explained(t, e, "/azure/gpt35turbo/")
	is.Equal(gpt35.State, "enabled")
	is.Equal(gpt35.Reads, "headroom 25%, weight 1")
	is.True(near(gpt35.Expected, 0.2)) // 0.25 of 1.25: a fifth

	gpt4o := explained(t, e, "/azure/gpt4o/")
	is.Equal(gpt4o.Reads, "headroom not said (full), weight 1")
	is.True(near(gpt4o.Expected, 0.8)) // full: four fifths

	backup := explained(t, e, "/azure/backup/")
	is.Equal(backup.State, "standby")
	says(t, "the backup's why", backup.Why, "tier 1 takes calls only when tier 0 cannot")
	is.Equal(backup.Expected, 0.0)
	is.True(near(sum(e), 1)) // the shares add up to every call

	// The quarter left runs out too, and gpt4o's upstream says none left
	// until the reset: the strategy declines tier 0, and tier 1 takes the
	// calls.
	p.Routers[2].Room, p.Routers[2].Headroom = 0, 0
	p.Routers[3].HeadroomKnown, p.Routers[3].RateLimitedUntil = true, reset
	e = broker.Explain(p, now)
	is.Equal(e.Tier, 1)
	says(t, "the pool's why", e.Why, "tier 1 takes the calls, chosen by the headroom strategy: tier 0's routers have no headroom left")
	gpt4o = explained(t, e, "/azure/gpt4o/")
	is.Equal(gpt4o.State, "no headroom")
	is.Equal(gpt4o.Until, reset) // until its rate-limit reset
	says(t, "gpt4o's why", gpt4o.Why, "until 2026-05-01T12:00:30Z (in 30s) (its rate-limit reset)")
	is.Equal(explained(t, e, "/azure/backup/").Expected, 1.0)

	// Without tier 1, every tier declines: tier 0 gets the calls by weight.
	p.Routers = p.Routers[:4]
	e = broker.Explain(p, now)
	is.Equal(e.Rule, broker.EveryTierDeclined)
	is.True(near(explained(t, e, "/azure/gpt4o/").Expected, 0.5))
	is.True(near(sum(e), 1))
}

func TestExplainSaysWhatTheAllDisabledModeDoes(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	out := func(router string, weight int, until time.Duration, manual bool) broker.RouterView {
		ph := broker.Disabled
		if manual {
			ph = broker.Manual
		}
		return broker.RouterView{Router: router, Phase: ph, Weight: weight,
			Record: &broker.Record{Router: router, Manual: manual, Until: now.Add(until), By: "replica-1", Reason: "egress_status_code 502"}}
	}
	routers := []broker.RouterView{out("/a/1/", 1, time.Minute, false), out("/a/2/", 3, 10*time.Second, false), out("/a/3/", 1, time.Second, true)}
	for _, tc := range []struct {
		mode     broker.AllDisabled
		routers  []broker.RouterView
		rule     broker.Rule
		expected []float64
		why      string
	}{
		{broker.Panic, routers, broker.PanicRule, []float64{0, 1, 0}, "panic sends the calls to /a/2/, whose disable ends soonest"},
		{broker.Any, routers, broker.AnyRule, []float64{0.25, 0.75, 0}, "any chooses among all but those disabled by hand"},
		{broker.Ingress, routers, broker.IngressRule, []float64{0, 0, 0}, "ingress router's own outbound"},
		{broker.Panic, routers[2:], broker.ByHand, []float64{0}, "every router is disabled by hand"},
	} {
		t.Run(string(tc.mode), func(t *testing.T) {
			is := is.New(t)
			e := broker.Explain(broker.PoolView{Ingress: "/a/", Strategy: "random", AllDisabled: tc.mode, Routers: tc.routers}, now)
			is.Equal(e.Rule, tc.rule)
			is.Equal(e.Tier, -1) // no tier takes the calls
			says(t, "the pool's why", e.Why, tc.why)
			for i, r := range e.Routers {
				is.True(near(r.Expected, tc.expected[i])) // each router's share, as the mode gives it
			}
		})
	}
}

func TestExplainGivesEachStrategysShares(t *testing.T) {
	now := time.Now()
	ms := time.Millisecond
	for _, tc := range []struct {
		strategy string
		routers  []broker.RouterView
		expected []float64
		reads    string // of the first router
	}{
		{"random", []broker.RouterView{{Weight: 1}, {Weight: 3}}, []float64{0.25, 0.75}, "weight 1"},
		// The fewest in flight per weight take the next calls, in equal parts.
		{"least-busy", []broker.RouterView{{Weight: 1, InFlight: 2}, {Weight: 2, InFlight: 2}, {Weight: 1, InFlight: 1}},
			[]float64{0, 0.5, 0.5}, "2 in flight over the fleet, weight 1"},
		// The fewest sessions and calls in flight per weight, with this
		// call, take the next first calls; one without headroom is passed
		// over.
		{"sessions", []broker.RouterView{{Weight: 1, Sessions: 5, InFlight: 1}, {Weight: 2, Sessions: 11}, {Weight: 1, Sessions: 5},
			{Weight: 1, HeadroomKnown: true, Room: 0}},
			[]float64{0, 0.5, 0.5, 0}, "5 sessions pinned, 1 in flight over the fleet, weight 1"},
		// The lowest latency takes what is not explored.
		{"latency", []broker.RouterView{{Weight: 1, Latency: 80 * ms, LatencyKnown: true}, {Weight: 1, Latency: 20 * ms, LatencyKnown: true}},
			[]float64{0.025, 0.975}, "latency 80ms, weight 1"},
		// One not heard of is tried first, unless its first call is out.
		{"latency", []broker.RouterView{{Weight: 1, Latency: 20 * ms, LatencyKnown: true}, {Weight: 1}, {Weight: 1, InFlight: 1}},
			[]float64{0.05 / 3, 0.05/3 + 0.95, 0.05 / 3}, "latency 20ms, weight 1"},
		// Nothing heard of: by weight.
		{"latency", []broker.RouterView{{Weight: 1}, {Weight: 1}}, []float64{0.5, 0.5}, "latency not heard of yet, 0 in flight, weight 1"},
		{"headroom", []broker.RouterView{{Weight: 2, HeadroomKnown: true, Room: 0.5}, {Weight: 1}}, []float64{0.5, 0.5}, "headroom 50%, weight 2"},
		// The cheapest per call, by weight among equals; one without
		// headroom is passed over.
		{"cost", []broker.RouterView{{Weight: 1, Price: &broker.Price{Input: 1, Output: 2}, CallCost: 0.002},
			{Weight: 1, Price: &broker.Price{Input: 0.5, Output: 2}, CallCost: 0.001}, {Weight: 3, Price: &broker.Price{Input: 1, Output: 1}, CallCost: 0.001},
			{Weight: 1, Price: &broker.Price{}, CallCost: 0, HeadroomKnown: true, Room: 0}},
			[]float64{0, 0.25, 0.75, 0}, "0.002 per call (price 1 input, 0 cached input, 2 output per million tokens), weight 1"},
	} {
		t.Run(tc.strategy, func(t *testing.T) {
			is := is.New(t)
			for i := range tc.routers {
				tc.routers[i].Router = "/a/" + string(rune('1'+i)) + "/"
			}
			e := broker.Explain(broker.PoolView{Ingress: "/a/", Strategy: tc.strategy, AllDisabled: broker.Panic, Routers: tc.routers}, now)
			is.Equal(e.Rule, broker.ByStrategy)
			for i, r := range e.Routers {
				is.True(r.ExpectedKnown)
				if !near(r.Expected, tc.expected[i]) {
					t.Errorf("router %d's share: %v, want %v", i, r.Expected, tc.expected[i])
				}
			}
			is.Equal(e.Routers[0].Reads, tc.reads)
			is.True(near(sum(e), 1)) // the shares add up to every call
		})
	}
}

// The explanation is the truth: a broker's calls go where its own
// explanation says, in the shares it gives.
func TestExplainedSharesAreWhereABrokersCallsGo(t *testing.T) {
	is := is.New(t)
	b, _ := newBroker(t, broker.Config{Pools: []broker.Pool{{Ingress: "/a/", Routers: []broker.Router{
		{Path: "/a/1/", Weight: 1}, {Path: "/a/2/", Weight: 3}, {Path: "/a/3/", Weight: 2}, {Path: "/a/4/", Weight: 1, Priority: 1}}}}})
	b.Report([]byte("/a/3/"), 503, 20*time.Second)
	e, ok := b.Explain("/a/", time.Now())
	is.True(ok)
	is.Equal(e.Strategy, "random") // the default, named
	dud := explained(t, e, "/a/3/")
	is.Equal(dud.State, "disabled")
	says(t, "the dud's why", dud.Why, "egress_status_code 503, Retry-After 20s")
	const calls = 20000
	got := map[string]int{}
	for range calls {
		got[pick(b, "/a/")]++
	}
	for _, r := range e.Routers {
		share := float64(got[r.Router]) / calls
		if math.Abs(share-r.Expected) > 0.02 {
			t.Errorf("%s got %.3f of the calls; its explanation says %.3f", r.Router, share, r.Expected)
		}
	}
	_, ok = b.Explain("/b/", time.Now())
	is.True(!ok) // no such pool
	is.Equal(b.Ingresses(), []string{"/a/"})
}

// says fails the test unless got, the text of what, holds want.
func says(t *testing.T, what, got, want string) {
	t.Helper()
	if !strings.Contains(got, want) {
		t.Fatalf("%s does not say %q; it says:\n%s", what, want, got)
	}
}
