package broker_test

import (
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/testutil/natstest"
)

// pinnedOn is how many of b's remembered sessions last used each router.
func pinnedOn(b *broker.Broker) map[string]int {
	out := map[string]int{}
	for _, r := range b.SessionRouters() {
		out[r.Router] = r.Pinned
	}
	return out
}

// firstCall makes a conversation's first call in b's pool /s/ (it has no
// session header yet), reports it, and tells b of its transaction, as
// gecholog's log does: the session is then pinned where the call went.
func firstCall(b *broker.Broker, key []byte) string {
	r := settled(b, "/s/", nil)
	heard(b, key, r)
	return r
}

func TestTheFirstCallsOfSessionsSpreadThemByWeightWithinAFew(t *testing.T) {
	is := is.New(t)
	p := sessionPool([]int{1, 1, 2})
	is.Equal(p.StrategyName(), broker.SessionsStrategy) // the default of "session" affinity
	b, _ := newBroker(t, broker.Config{Pools: []broker.Pool{p}})
	for i := range 1000 {
		firstCall(b, sessionKey(i))
	}
	// Weighted random puts 250 ± 14 (one standard deviation) on a router
	// of weight 1: counting the sessions keeps each within one.
	got := pinnedOn(b)
	t.Logf("sessions pinned: %v", got)
	for r, want := range map[string]int{"/s/r0/": 250, "/s/r1/": 250, "/s/r2/": 500} {
		is.True(got[r] >= want-1 && got[r] <= want+1) // within one of its weight's share
	}
	// A router disabled and back: the new sessions go to it until it has
	// its share again.
	disable(b, "/s/r0/", 1)
	for i := 1000; i < 1300; i++ {
		is.True(firstCall(b, sessionKey(i)) != "/s/r0/") // never to a router that is out
	}
	enable(b, "/s/r0/", 2)
	var toR0 int
	for i := 1300; i < 1400; i++ {
		if firstCall(b, sessionKey(i)) == "/s/r0/" {
			toR0++
		}
	}
	got = pinnedOn(b)
	t.Logf("after r0 was out for 300 sessions and back for 100: %v; %d of the 100 to r0", got, toR0)
	is.Equal(toR0, 100)          // r0 (250) is under its share of 1,400 (350): it takes every first call
	is.Equal(got["/s/r0/"], 350) // and has its share
}

func TestFirstCallsAtOnceSpreadByTheirCallsInFlight(t *testing.T) {
	is := is.New(t)
	b, _ := newBroker(t, broker.Config{Pools: []broker.Pool{sessionPool([]int{1, 1, 2})}})
	got := map[string]int{}
	for range 40 { // none answered yet, none heard on the log
		got[choose(b, "/s/", nil)]++
	}
	t.Logf("40 first calls in flight: %v", got)
	is.Equal(got, map[string]int{"/s/r0/": 10, "/s/r1/": 10, "/s/r2/": 20}) // by weight, not all to one router
}

func TestFirstCallsPassOverARouterWithNoRateLimitLeft(t *testing.T) {
	is := is.New(t)
	p := sessionPool([]int{1, 1, 1}, 0, 0, 1)
	b, _ := newBroker(t, broker.Config{Pools: []broker.Pool{p}})
	spent := func(router string) {
		is.NoErr(b.Finished([]byte(router), 10*time.Millisecond, &broker.RateLimits{RemainingRequests: 0, LimitRequests: 100,
			ResetRequests: time.Now().Add(time.Hour), RemainingTokens: -1, LimitTokens: -1}))
	}
	spent("/s/r0/")
	for i := range 20 {
		is.Equal(firstCall(b, sessionKey(i)), "/s/r1/") // r0 said none is left: r1, although it has more sessions
	}
	spent("/s/r1/")
	is.Equal(settled(b, "/s/", nil), "/s/r2/") // no room in tier 0: the next tier
	is.Equal(b.Stats().Calls[broker.Panicked], uint64(0))
}

func TestASessionsRouterCountsItUntilItsLifetimeIsOver(t *testing.T) {
	is := is.New(t)
	p := sessionPool([]int{1, 1})
	p.Affinity.TTL = time.Second
	b, _ := newBroker(t, broker.Config{Pools: []broker.Pool{p}})
	for i := range 10 {
		heard(b, sessionKey(i), "/s/r0/")
	}
	ex, _ := b.Explain("/s/", time.Now())
	is.Equal(ex.Routers[0].Sessions, int64(10)) // what the strategy reads
	is.True(strings.Contains(ex.Routers[0].Reads, "10 sessions pinned"))
	is.Equal(settled(b, "/s/", nil), "/s/r1/") // a new session goes where there are none
	natstest.Eventually(t, 10*time.Second, func() bool {
		b.Refresh(time.Now()) // a replica's, every few milliseconds, sweeps the memory a part at a time
		ex, _ := b.Explain("/s/", time.Now())
		return ex.Routers[0].Sessions == 0
	}, "r0's sessions forgotten at the end of their lifetime")
	is.Equal(pinnedOn(b)["/s/r0/"], 0)
}

func TestTheSessionsStrategyIsOnlyForSessionAffinity(t *testing.T) {
	is := is.New(t)
	p := sessionPool([]int{1, 1})
	p.Affinity = broker.Affinity{Header: "X-Conversation-Id"}
	is.Equal(p.StrategyName(), broker.DefaultStrategy) // a header's pool remembers no session: random by weight
	p.Strategy = broker.SessionsStrategy
	err := broker.ValidatePools([]broker.Pool{p})
	is.True(err != nil && strings.Contains(err.Error(), `"affinity": "session"`)) // refused, saying what to give
	p = sessionPool([]int{1, 1})
	p.Strategy = "random"
	is.NoErr(broker.ValidatePools([]broker.Pool{p}))
	is.Equal(p.StrategyName(), "random") // a strategy the pool names places its first calls
}
