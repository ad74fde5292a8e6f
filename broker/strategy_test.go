package broker

import (
	"errors"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/matryer/is"
)

// tierOf is a tier of routers r0, r1, ... with weights, for strategies to
// pick from; set each router's statistics on t.routes[i].stats.
func tierOf(weights ...int) *Tier {
	t := &Tier{}
	total := 0
	for i, w := range weights {
		total += w
		t.routes = append(t.routes, &route{path: fmt.Sprintf("/r%d/", i), stats: newRouteStats(time.Minute, time.Minute, time.Now())})
		t.weights = append(t.weights, w)
		t.cum = append(t.cum, total)
		t.index = append(t.index, i)
	}
	return t
}

// picks is how often s picks each router of t in n picks.
func picks(s Strategy, t *Tier, n int) []int {
	got := make([]int, t.Len())
	for range n {
		if i := s.Pick(t); i >= 0 {
			got[i]++
		}
	}
	return got
}

func TestLeastBusyPicksTheFewestInFlightRelativeToWeight(t *testing.T) {
	is := is.New(t)
	tr := tierOf(1, 2, 1)
	tr.routes[0].stats.chosen.add(3) // 3 per weight
	tr.routes[1].stats.chosen.add(4) // 2 per weight
	tr.routes[2].stats.chosen.add(5) // 5 per weight
	is.Equal(picks(leastBusy{}, tr, 100), []int{0, 100, 0})
	is.Equal(tr.InFlight(1), int64(4))
}

func TestLeastBusyBreaksTiesAtRandom(t *testing.T) {
	is := is.New(t)
	tr := tierOf(1, 1, 1, 1)
	for _, n := range picks(leastBusy{}, tr, 8000) {
		is.True(n > 1700 && n < 2300) // each about a quarter
	}
}

func TestLeastBusyOfManyRoutersComparesTwo(t *testing.T) {
	is := is.New(t)
	tr := tierOf(make([]int, 40)...)
	for i := range tr.weights {
		tr.weights[i] = 1
		tr.routes[i].stats.chosen.add(int64(i)) // router 0 the least busy
	}
	got := picks(leastBusy{}, tr, 4000)
	is.True(got[39] == 0)     // the busiest never wins a comparison
	is.True(got[0] > got[20]) // the less busy win more
}

func TestLatencyPrefersTheFastestExploresAndTriesTheUnheardFirst(t *testing.T) {
	is := is.New(t)
	tr := tierOf(1, 1, 1)
	got := picks(lowestLatency{}, tr, 3000)
	for _, n := range got {
		is.True(n > 800) // nothing heard: random
	}
	tr.routes[0].stats.addLatency(400 * time.Millisecond)
	tr.routes[1].stats.addLatency(50 * time.Millisecond)
	got = picks(lowestLatency{}, tr, 10000)
	is.True(got[2] > 9000) // not yet heard of: tried first
	tr.routes[2].stats.addLatency(100 * time.Millisecond)
	got = picks(lowestLatency{}, tr, 20000)
	is.True(got[1] > 19000)                      // the fastest
	is.True(got[0] > 200 && got[2] > 200)        // and every other explored: at least 1% each
	is.True(got[0] < 600 && got[2] < 600+got[0]) // but only the exploring share
}

func TestLatencyFollowsARouterThatBecomesFaster(t *testing.T) {
	is := is.New(t)
	tr := tierOf(1, 1)
	tr.routes[0].stats.addLatency(100 * time.Millisecond)
	tr.routes[1].stats.addLatency(400 * time.Millisecond)
	for range 20 {
		tr.routes[1].stats.addLatency(20 * time.Millisecond) // it recovered, and its explored calls say so
	}
	got := picks(lowestLatency{}, tr, 1000)
	is.True(got[1] > 900) // the heavier router takes most calls
}

func TestHeadroomWeighsByWhatIsLeftAndSkipsTheExhausted(t *testing.T) {
	is := is.New(t)
	now := time.Now()
	tr := tierOf(1, 1, 1)
	setLimits(tr.routes[0], &RateLimits{RemainingRequests: 90, LimitRequests: 100, RemainingTokens: -1, LimitTokens: -1})
	setLimits(tr.routes[1], &RateLimits{RemainingRequests: 10, LimitRequests: 100, RemainingTokens: -1, LimitTokens: -1})
	setLimits(tr.routes[2], &RateLimits{RemainingRequests: 0, LimitRequests: 100, RemainingTokens: -1, LimitTokens: -1,
		ResetRequests: now.Add(time.Hour)})
	got := picks(mostHeadroom{}, tr, 10000)
	is.Equal(got[2], 0)                     // none left until its reset
	is.True(got[0] > 8600 && got[0] < 9400) // 90 : 10
	h, ok := tr.Headroom(1)
	is.True(ok && h == 0.1) // a tenth of the requests left
}

func TestHeadroomIsFullAgainAtTheResetAndRandomWithoutHeaders(t *testing.T) {
	is := is.New(t)
	now := time.Now()
	tr := tierOf(1, 1)
	setLimits(tr.routes[0], &RateLimits{RemainingRequests: 0, LimitRequests: 100, RemainingTokens: 500, LimitTokens: 1000,
		ResetRequests: now.Add(-time.Second)}) // reset already: the tokens, half left, decide
	h, ok := tr.Headroom(0)
	is.True(ok && h == 0.5) // half of the requests left
	_, ok = tr.Headroom(1)
	is.True(!ok) // no headers from its upstream
	got := picks(mostHeadroom{}, tr, 9000)
	is.True(got[0] > 2600 && got[0] < 3400) // 0.5 : 1
}

// A router with none left takes calls again from its reset on, without
// waiting for the replica's next refresh of what the strategies read.
func TestHeadroomIsFullAgainFromTheResetOnBeforeAnyRefresh(t *testing.T) {
	is := is.New(t)
	tr := tierOf(1, 1)
	reset := time.Now().Add(50 * time.Millisecond)
	setLimits(tr.routes[0], &RateLimits{RemainingRequests: 0, LimitRequests: 100, RemainingTokens: -1, LimitTokens: -1, ResetRequests: reset})
	setLimits(tr.routes[1], &RateLimits{RemainingRequests: -1, LimitRequests: -1, RemainingTokens: 0, LimitTokens: 1000, ResetTokens: reset})
	is.Equal(picks(mostHeadroom{}, tr, 100), []int{0, 0}) // neither has any left: the tier declines (-1)
	for time.Now().Before(reset) {                        // no refresh comes: the picks alone must see the reset pass
		runtime.Gosched()
	}
	got := picks(mostHeadroom{}, tr, 1000)
	is.True(got[0] > 350 && got[1] > 350) // both full again, at random
}

func TestHeadroomDeclinesATierWithNoneLeft(t *testing.T) {
	is := is.New(t)
	tr := tierOf(1, 1)
	for _, rt := range tr.routes {
		setLimits(rt, &RateLimits{RemainingRequests: 0, LimitRequests: 100, RemainingTokens: -1, LimitTokens: -1,
			ResetRequests: time.Now().Add(time.Minute)})
	}
	is.Equal(mostHeadroom{}.Pick(tr), -1) // the next tier takes the call
}

func TestEveryStrategyIsKnownByNameAndAnUnknownOneIsRefused(t *testing.T) {
	is := is.New(t)
	is.Equal(Strategies(), []string{"cost", "headroom", "latency", "least-busy", "random", "sessions"})
	_, err := strategy("round-robin")
	is.True(err != nil) // refused
	s, err := strategy(Pool{}.StrategyName())
	is.NoErr(err)
	is.Equal(s, Strategy(random{})) // a pool that names none
	s, err = strategy(Pool{Affinity: Affinity{Session: true}}.StrategyName())
	is.NoErr(err)
	is.Equal(s, Strategy(fewestSessions{})) // a pool with "session" affinity that names none
}

// Azure OpenAI sends x-ratelimit-remaining-* without a reset: a router told
// 0 left is out of the headroom strategy's choices for a minute, not for
// ever (no call, no newer answer to lift it).
func TestACountSaidWithoutAResetIsFullAgainAMinuteOn(t *testing.T) {
	is := is.New(t)
	b, err := New(Config{Policy: Policy{DisabledTime: time.Minute}, Pools: []Pool{{Ingress: "/a/", Strategy: "headroom", Routers: []Router{{Path: "/a/x/", Weight: 1}}}}})
	is.NoErr(err)
	before := time.Now()
	b.Finished([]byte("/a/x/"), 0, &RateLimits{RemainingRequests: 0, LimitRequests: 100, RemainingTokens: 5000, LimitTokens: -1})
	after := time.Now()
	l := b.cur().routers["/a/x/"].stats.limits.Load()
	for _, reset := range []time.Time{l.ResetRequests, l.ResetTokens} {
		is.True(!reset.Before(before.Add(time.Minute)) && !reset.After(after.Add(time.Minute))) // a minute on
	}
	is.Equal(l.headroom(after), 0.0)                    // none left now
	is.Equal(l.headroom(after.Add(time.Minute+1)), 1.0) // full again a minute on
}

// setLimits is what a transaction heard of rt's upstream does: its limits,
// and what the headroom strategy reads of them.
func setLimits(rt *route, l *RateLimits) {
	rt.stats.limits.Store(l)
	rt.stats.setRoom(time.Now())
}

func TestHeadroomTakesTheCallsInFlightFromWhatTheLastAnswerSaidWasLeft(t *testing.T) {
	is := is.New(t)
	tr := tierOf(1, 1)
	setLimits(tr.routes[0], &RateLimits{RemainingRequests: 5, LimitRequests: 100, RemainingTokens: -1, LimitTokens: -1})
	setLimits(tr.routes[1], &RateLimits{RemainingRequests: 50, LimitRequests: 100, RemainingTokens: -1, LimitTokens: -1})
	tr.routes[0].stats.chosen.add(5) // 5 calls chosen since: none left for a sixth
	h, ok := tr.Headroom(0)
	is.True(ok && h == 0) // what the strategy reads
	is.Equal(picks(mostHeadroom{}, tr, 1000), []int{0, 1000})
}

func TestHeadroomDeclinesATierOfOneRouterWithNoneLeft(t *testing.T) {
	is := is.New(t)
	b, err := New(Config{Policy: Policy{DisabledTime: time.Minute}, Pools: []Pool{{Ingress: "/a/", Strategy: "headroom",
		Routers: []Router{{Path: "/a/ptu/", Weight: 1}, {Path: "/a/payg/", Weight: 1, Priority: 1}}}}})
	is.NoErr(err)
	choose := func() string { return b.Members()[b.Choose([]byte("/a/"))] }
	is.Equal(choose(), "/a/ptu/") // tier 0 first
	b.Finished([]byte("/a/ptu/"), time.Millisecond, &RateLimits{RemainingRequests: 0, LimitRequests: 10, RemainingTokens: -1, LimitTokens: -1,
		ResetRequests: time.Now().Add(time.Minute)})
	for range 100 {
		is.Equal(choose(), "/a/payg/") // the PTU has none left: tier 1 takes the calls
	}
}

func TestLatencyTriesARouterNotYetHeardOfWithOneCallAtATime(t *testing.T) {
	is := is.New(t)
	tr := tierOf(1, 1)
	tr.routes[0].stats.addLatency(50 * time.Millisecond)
	is.True(picks(lowestLatency{}, tr, 100)[1] > 90) // not heard of: tried first
	tr.routes[1].stats.chosen.add(1)                 // its first call is out
	got := picks(lowestLatency{}, tr, 2000)
	is.True(got[1] < 100) // only the exploring share until that call is heard of
	tr.routes[1].stats.addLatency(400 * time.Millisecond)
	tr.routes[1].stats.reported.add(1)
	got = picks(lowestLatency{}, tr, 2000)
	is.True(got[0] > 1800) // heard of, and slower
}

// A reset is bounded as a Retry-After is: one answer saying none is left
// until 2000000h (or the year 2200) keeps the router waiting for the
// longest disable, DisabledTime × the backoff cap, not for centuries; and
// its view says it waits, and until when.
func TestARateLimitResetIsHeldWithinTheLongestDisable(t *testing.T) {
	is := is.New(t)
	b, err := New(Config{Policy: Policy{DisabledTime: time.Minute}, Pools: []Pool{{Ingress: "/a/", Strategy: "headroom",
		Routers: []Router{{Path: "/a/x/", Weight: 1}, {Path: "/a/y/", Weight: 1}}}}})
	is.NoErr(err)
	before := time.Now()
	err = b.Finished([]byte("/a/x/"), time.Millisecond, &RateLimits{RemainingRequests: 0, LimitRequests: 10, RemainingTokens: -1, LimitTokens: -1,
		ResetRequests: before.Add(2000000 * time.Hour)})
	is.NoErr(err)
	err = b.Finished([]byte("/a/y/"), time.Millisecond, &RateLimits{RemainingRequests: -1, LimitRequests: -1, RemainingTokens: 0, LimitTokens: 100,
		ResetTokens: time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC)})
	is.NoErr(err)
	after := time.Now()
	for _, r := range []string{"/a/x/", "/a/y/"} {
		v := viewOf(b, r)
		is.True(v.HeadroomKnown && v.Headroom == 0)                      // none left
		is.True(!v.RateLimitedUntil.Before(before.Add(8 * time.Minute))) // waits the longest disable
		is.True(!v.RateLimitedUntil.After(after.Add(8 * time.Minute)))   // and no longer
		l := b.cur().routers[r].stats.limits.Load()
		is.Equal(l.headroom(after.Add(8*time.Minute+time.Millisecond)), 1.0) // full again then
	}
	// Not waiting: nothing said, some left, or a reset passed.
	is.True(viewOf(b, "/a/x/").RateLimitedUntil.After(after)) // the router waits for its reset
	b.Finished([]byte("/a/x/"), time.Millisecond, &RateLimits{RemainingRequests: 3, LimitRequests: 10, RemainingTokens: -1, LimitTokens: -1,
		ResetRequests: time.Now().Add(time.Second)})
	is.True(viewOf(b, "/a/x/").RateLimitedUntil.IsZero()) // some left: not waiting
}

// A latency sample longer than the in-flight bound is a broken or forged
// timer: refused, so that one transaction stopping in the year 9999 does
// not make a router average 95 years, and a negative one is no sample.
func TestALatencySampleLongerThanTheInFlightBoundIsRefused(t *testing.T) {
	is := is.New(t)
	b, err := New(Config{Policy: Policy{DisabledTime: time.Minute}, Pools: []Pool{{Ingress: "/a/", Strategy: "latency",
		Routers: []Router{{Path: "/a/x/", Weight: 1}}}}})
	is.NoErr(err)
	for range 5 {
		is.NoErr(b.Finished([]byte("/a/x/"), 10*time.Millisecond, nil))
	}
	err = b.Finished([]byte("/a/x/"), time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC).Sub(time.Now()), nil)
	is.True(errors.Is(err, ErrLatencyOutOfBounds)) // refused, and said
	err = b.Finished([]byte("/a/x/"), DefaultInFlightBound+time.Nanosecond, nil)
	is.True(errors.Is(err, ErrLatencyOutOfBounds)) // just past the bound too
	is.NoErr(b.Finished([]byte("/a/x/"), -time.Second, nil))
	is.Equal(viewOf(b, "/a/x/").Latency, 10*time.Millisecond)        // the average is the real samples'
	is.NoErr(b.Finished([]byte("/a/x/"), DefaultInFlightBound, nil)) // the bound itself is a sample
	is.Equal(viewOf(b, "/a/x/").Latency, 10*time.Millisecond+(DefaultInFlightBound-10*time.Millisecond)/5)
}

func viewOf(b *Broker, router string) RouterView {
	for _, v := range b.View(time.Now()) {
		if v.Router == router {
			return v
		}
	}
	return RouterView{}
}

// priced gives t's routers prices per million tokens, input and output,
// and prices them at mix, as a snapshot of their pool does.
func priced(t *Tier, mix TokenMix, prices ...[2]float64) {
	for i, p := range prices {
		t.routes[i].price.Store(&Price{Input: p[0], CachedInput: p[0], Output: p[1]})
	}
	t.setCosts(&poolMix{TokenMix: mix})
}

func TestCostPicksTheCheapestPerCallAndOfManyRoutersLooksAtThe16Cheapest(t *testing.T) {
	is := is.New(t)
	tr := tierOf(1, 1, 1)
	priced(tr, DefaultTokenMix, [2]float64{1, 1}, [2]float64{0.5, 1}, [2]float64{0.1, 4})
	is.Equal(picks(cheapest{}, tr, 100), []int{0, 100, 0}) // 0.000625 per call of 750 in and 250 out, against 0.001 and 0.001075
	c, ok := tr.CallCost(1)
	is.True(ok && c == (750*0.5+250*1)/1e6) // what the strategy reads
	is.Equal(tr.Cheapest(0), 1)
	is.Equal(tr.Cheapest(2), 2) // the dearest last

	many := tierOf(make([]int, 40)...)
	var prices [][2]float64
	for i := range many.weights {
		many.weights[i] = 1
		prices = append(prices, [2]float64{float64(40 - i), 1}) // router 39 the cheapest
	}
	priced(many, DefaultTokenMix, prices...)
	is.Equal(picks(cheapest{}, many, 100)[39], 100) // the cheapest of 40
	for i := 24; i < 40; i++ {                      // the 16 cheapest without headroom: the tier declines
		setLimits(many.routes[i], &RateLimits{RemainingRequests: 0, LimitRequests: 10, RemainingTokens: -1, LimitTokens: -1,
			ResetRequests: time.Now().Add(time.Hour)})
	}
	is.Equal(cheapest{}.Pick(many), -1)
}

// A tier without prices (a pool no price was given for) keeps no costs:
// its routers are in the tier's order, and none has a cost.
func TestATierWithoutPricesHasNoCosts(t *testing.T) {
	is := is.New(t)
	tr := tierOf(1, 1)
	tr.setCosts(&poolMix{TokenMix: DefaultTokenMix})
	_, ok := tr.CallCost(0)
	is.True(!ok) // no price
	is.Equal(tr.Cheapest(1), 1)
}
