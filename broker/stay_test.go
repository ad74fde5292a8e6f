package broker_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/testutil/natstest"
)

// heard tells b that a call of session key used router, as gecholog's
// transaction log does once the call is over.
func heard(b *broker.Broker, key []byte, router string) { b.Remember(key, []byte(router)) }

// notFirst is a router of p that is not first in key's order: where a
// session goes only because it was heard there.
func notFirst(t *testing.T, p broker.Pool, key []byte) string {
	t.Helper()
	order, _ := newBroker(t, broker.Config{Pools: []broker.Pool{p}, ID: "order"})
	first := choose(order, p.Ingress, key)
	for _, r := range p.Routers {
		if r.Path != first && r.Priority == 0 {
			return r.Path
		}
	}
	t.Fatalf("pool %s has no other router of tier 0 than %s", p.Ingress, first)
	return ""
}

// sessionRouter is what b's memory says of router.
func sessionRouter(b *broker.Broker, router string) broker.SessionRouter {
	for _, r := range b.SessionRouters() {
		if r.Router == router {
			return r
		}
	}
	return broker.SessionRouter{}
}

func TestTheRouterTheLogNamesPinsTheSessionsNextCallsOnEveryReplica(t *testing.T) {
	is := is.New(t)
	p := sessionPool([]int{1, 2, 1})
	a, _ := newBroker(t, broker.Config{Pools: []broker.Pool{p}, ID: "a"})
	b, _ := newBroker(t, broker.Config{Pools: []broker.Pool{p}, ID: "b"})
	for i := range 50 {
		k := sessionKey(i)
		// The first call had no session header: the strategy sent it to a
		// router other than the one the session's order would pick.
		there := notFirst(t, p, k)
		heard(a, k, there)
		heard(b, k, there)
		for range 3 {
			is.Equal(settled(a, "/s/", k), there) // the next calls go where the first went
			is.Equal(settled(b, "/s/", k), there) // from either replica
		}
		is.Equal(sessionRouter(a, there).Pinned > 0, true)
	}
	is.Equal(a.Sessions(), broker.SessionCounts{Keyed: 150, Remembered: 150}) // every call to its remembered router
	pinned := 0
	for _, r := range a.SessionRouters() {
		pinned += r.Pinned
		is.Equal(r.MovedIn+r.MovedOut, uint64(0)) // no session moved
	}
	is.Equal(pinned, 50) // each session pinned once
}

// Two calls of a session, the first on one router and the next on
// another, reach two replicas in either order (each reads some of the log
// itself, and hears the rest a few milliseconds later from the replica
// that read it): both remember the session alike, and send its next calls
// to the same router: where its first call went, or, when the pool says
// sessions stay where they move, where its last call went.
func TestASessionsCallsHeardInEitherOrderAreRememberedAlike(t *testing.T) {
	for _, stay := range []bool{false, true} {
		t.Run(fmt.Sprintf("stay %v", stay), func(t *testing.T) {
			is := is.New(t)
			p := sessionPool([]int{1, 1, 1})
			p.Affinity.Stay = stay
			inOrder, _ := newBroker(t, broker.Config{Pools: []broker.Pool{p}, ID: "in-order"})
			late, _ := newBroker(t, broker.Config{Pools: []broker.Pool{p}, ID: "late"})
			for i := range 20 {
				k := sessionKey(i)
				h, _ := broker.SessionHash(k)
				first := notFirst(t, p, k)
				next := p.Routers[0].Path
				if next == first {
					next = p.Routers[1].Path
				}
				began := time.Now()
				inOrder.RememberHash(h, []byte(first), began)
				inOrder.RememberHash(h, []byte(next), began.Add(time.Second))
				late.RememberHash(h, []byte(next), began.Add(time.Second))
				late.RememberHash(h, []byte(first), began) // older news
				want := first
				if stay {
					want = next
				}
				is.Equal(settled(inOrder, "/s/", k), want)
				is.Equal(settled(late, "/s/", k), want) // the same router on both
			}
			pinned := func(b *broker.Broker) (n []int) {
				for _, r := range b.SessionRouters() {
					n = append(n, r.Pinned)
				}
				return n
			}
			is.Equal(pinned(late), pinned(inOrder)) // and the same sessions pinned per router: where each last went
		})
	}
}

// moveAndReturn pins a session to a router it was heard on, disables that
// router so the session moves, and enables it again; it returns the
// router the session moved to and where its calls go once the router is
// back.
func moveAndReturn(t *testing.T, stay bool) (home, moved, after string, b *broker.Broker) {
	is := is.New(t)
	p := sessionPool([]int{1, 1, 1, 1})
	p.Affinity.Stay = stay
	b, _ = newBroker(t, broker.Config{Pools: []broker.Pool{p}})
	k := sessionKey(7)
	home = notFirst(t, p, k)
	heard(b, k, home)
	is.Equal(settled(b, "/s/", k), home) // pinned where it was heard
	disable(b, home, 1)
	moved = settled(b, "/s/", k)
	is.True(moved != home && moved != "") // out: the session moves
	heard(b, k, moved)                    // the log tells where it went
	for range 5 {
		is.Equal(settled(b, "/s/", k), moved) // once, and stays there while its router is out
	}
	is.Equal(sessionRouter(b, home), broker.SessionRouter{Router: home, MovedOut: 1})
	is.Equal(sessionRouter(b, moved), broker.SessionRouter{Router: moved, Pinned: 1, MovedIn: 1})
	enable(b, home, 2)
	after = settled(b, "/s/", k)
	heard(b, k, after)
	for range 5 {
		is.Equal(settled(b, "/s/", k), after) // wherever it goes, it keeps going there
	}
	return home, moved, after, b
}

func TestAMovedSessionGoesBackWhenItsRouterReturns(t *testing.T) {
	is := is.New(t)
	home, moved, after, b := moveAndReturn(t, false)
	is.Equal(after, home)                                                                                    // back where it was first heard
	is.Equal(sessionRouter(b, home), broker.SessionRouter{Router: home, Pinned: 1, MovedIn: 1, MovedOut: 1}) // and counted moving back
	is.Equal(sessionRouter(b, moved), broker.SessionRouter{Router: moved, MovedIn: 1, MovedOut: 1})
}

func TestAMovedSessionStaysWhereItMovedWhenThePoolSaysSo(t *testing.T) {
	is := is.New(t)
	home, moved, after, b := moveAndReturn(t, true)
	is.Equal(after, moved)                                                            // stays on the router it moved to
	is.Equal(sessionRouter(b, home), broker.SessionRouter{Router: home, MovedOut: 1}) // it moved once
	is.Equal(sessionRouter(b, moved), broker.SessionRouter{Router: moved, Pinned: 1, MovedIn: 1})
}

func TestASessionPinnedToTheSecondTierGoesBackToTheFirstUnlessItStays(t *testing.T) {
	for _, stay := range []bool{false, true} {
		t.Run(fmt.Sprintf("stay=%v", stay), func(t *testing.T) {
			is := is.New(t)
			p := sessionPool([]int{1, 1, 1, 1}, 0, 0, 1, 1)
			p.Affinity.Stay = stay
			b, _ := newBroker(t, broker.Config{Pools: []broker.Pool{p}})
			k := sessionKey(3)
			first := settled(b, "/s/", k)
			disable(b, "/s/r0/", 1)
			disable(b, "/s/r1/", 2)
			second := settled(b, "/s/", k) // tier 0 is out: tier 1
			is.True(second == "/s/r2/" || second == "/s/r3/")
			heard(b, k, second) // the log pins the session there
			is.Equal(settled(b, "/s/", k), second)
			enable(b, "/s/r0/", 3)
			enable(b, "/s/r1/", 4)
			if stay {
				is.Equal(settled(b, "/s/", k), second) // the session stays on tier 1
			} else {
				is.Equal(settled(b, "/s/", k), first) // back to tier 0, to its router there
			}
		})
	}
}

func TestASessionIsForgottenAfterItsLifetime(t *testing.T) {
	is := is.New(t)
	p := sessionPool([]int{1, 1, 1})
	p.Affinity.TTL = time.Second
	b, _ := newBroker(t, broker.Config{Pools: []broker.Pool{p}})
	k := sessionKey(11)
	there := notFirst(t, p, k)
	start := time.Now()
	heard(b, k, there)
	got := settled(b, "/s/", k)
	if time.Since(start) < p.Affinity.TTL {
		is.Equal(got, there) // remembered within its lifetime
	}
	natstest.Eventually(t, 10*time.Second, func() bool {
		b.Refresh(time.Now()) // as a replica does every few milliseconds
		return settled(b, "/s/", k) != there
	}, "the session forgotten")
	is.True(time.Since(start) >= p.Affinity.TTL)          // not before its lifetime was over
	is.Equal(sessionRouter(b, there).Pinned, 0)           // no longer pinned
	is.Equal(settled(b, "/s/", k), choose(b, "/s/", k))   // now by its order
	heard(b, k, "/s/r0/")                                 // heard again after its lifetime:
	is.Equal(sessionRouter(b, there).MovedOut, uint64(0)) // a new session, not a move
}

func TestTheMemoryOfSessionsIsBounded(t *testing.T) {
	is := is.New(t)
	b, _ := newBroker(t, broker.Config{Pools: []broker.Pool{sessionPool([]int{1, 1})}})
	const extra = 5000
	n := broker.MaxRemembered + extra
	for i := range n {
		heard(b, sessionKey(i), "/s/r1/")
	}
	pinned := sessionRouter(b, "/s/r1/").Pinned
	evicted := b.Sessions().Evicted
	t.Logf("%d sessions heard: %d remembered, %d evicted", n, pinned, evicted)
	is.True(pinned <= broker.MaxRemembered)       // never more than the bound
	is.Equal(pinned+int(evicted), n)              // each one not remembered was evicted, and counted
	is.True(pinned > broker.MaxRemembered*99/100) // the memory is used
	for i := n - 100; i < n; i++ {
		k := sessionKey(i)
		if settled(b, "/s/", k) != "/s/r1/" {
			t.Fatalf("session %d, among the last heard, was forgotten", i)
		}
	}
}

func TestOnlySessionAffinityIsRemembered(t *testing.T) {
	is := is.New(t)
	p := sessionPool([]int{1, 1, 1})
	p.Affinity = broker.Affinity{Header: "X-Conversation-Id"}
	b, _ := newBroker(t, broker.Config{Pools: []broker.Pool{p}})
	k := sessionKey(5)
	heard(b, k, notFirst(t, sessionPool([]int{1, 1, 1}), k))
	is.Equal(settled(b, "/s/", k), choose(b, "/s/", k)) // by the session's order
	is.Equal(b.Sessions().Remembered, uint64(0))        // the log was not used
	for _, a := range []broker.Affinity{{Header: "X-Id", Stay: true}, {Header: "X-Id", TTL: time.Minute}} {
		p.Affinity = a
		err := broker.ValidatePools([]broker.Pool{p})
		is.True(err != nil && strings.Contains(err.Error(), `"session" affinity only`)) // refused, saying why
	}
	for _, ttl := range []time.Duration{time.Millisecond, 25 * time.Hour, -time.Second} {
		p.Affinity = broker.Affinity{Session: true, TTL: ttl}
		err := broker.ValidatePools([]broker.Pool{p})
		is.True(err != nil && strings.Contains(err.Error(), "ttl")) // out of range, refused
	}
	p.Affinity = broker.Affinity{Session: true, TTL: 5 * time.Minute, Stay: true}
	is.NoErr(broker.ValidatePools([]broker.Pool{p}))
}

func TestTheMemoryOfSessionsIsSafeForConcurrentUse(t *testing.T) {
	is := is.New(t)
	p := sessionPool([]int{1, 1, 1})
	b, _ := newBroker(t, broker.Config{Pools: []broker.Pool{p}})
	members := map[string]bool{"/s/r0/": true, "/s/r1/": true, "/s/r2/": true}
	var wg sync.WaitGroup
	bad := make(chan string, 8)
	for g := range 4 {
		wg.Go(func() {
			for i := range 2000 {
				k := sessionKey(i % 300)
				switch g {
				case 0:
					heard(b, k, fmt.Sprintf("/s/r%d/", i%3))
				case 1:
					if i%200 == 0 {
						_ = b.SessionRouters()
					}
					fallthrough
				default:
					if r := settled(b, "/s/", k); !members[r] {
						select {
						case bad <- r:
						default:
						}
					}
				}
			}
		})
	}
	wg.Wait()
	close(bad)
	for r := range bad {
		is.Equal(r, "a router of the pool") // every choice is one of the pool's routers
	}
	is.True(b.Sessions().Remembered > 0) // the memory was read
}

func TestARememberedSessionsCallAllocatesNothing(t *testing.T) {
	is := is.New(t)
	p := sessionPool([]int{1, 1, 1})
	// No logger: a debug line allocates, and a replica logs at info.
	b, err := broker.New(broker.Config{Pools: []broker.Pool{p}, Policy: broker.Policy{DisabledTime: time.Minute}})
	is.NoErr(err)
	t.Cleanup(func() { b.Close(context.Background()) })
	k := sessionKey(2)
	there := notFirst(t, p, k)
	heard(b, k, there)
	in, router := []byte("/s/"), []byte(there)
	allocs := testing.AllocsPerRun(1000, func() {
		b.ChooseSession(in, k)
		b.Report(router, 200, 0)
	})
	is.Equal(allocs, 0.0) // no allocation on the request path
	is.True(b.Sessions().Remembered >= 1000)
}

func TestARouterOnProbationTakesItsProbeFromASessionRememberedThere(t *testing.T) {
	is := is.New(t)
	p := sessionPool([]int{1, 1, 1})
	b, _ := newBroker(t, broker.Config{Pools: []broker.Pool{p}, Policy: broker.Policy{DisabledTime: 100 * time.Millisecond}})
	var mine, elsewhere []byte // a session remembered on /s/r0/ though its order puts another first; one the other way round
	for i := 0; mine == nil || elsewhere == nil; i++ {
		k := sessionKey(i)
		switch first := settled(b, "/s/", k); {
		case first != "/s/r0/" && mine == nil:
			mine = k
			heard(b, k, "/s/r0/")
		case first == "/s/r0/" && elsewhere == nil:
			elsewhere = k
			heard(b, k, notFirst(t, p, k))
		}
	}
	report(b, "/s/r0/", 503)
	natstest.Eventually(t, 5*time.Second, func() bool { return b.Phase("/s/r0/") == broker.Probation }, "r0 on probation")
	for range 50 {
		is.True(choose(b, "/s/", elsewhere) != "/s/r0/") // a session remembered elsewhere never carries the probe
	}
	natstest.Eventually(t, 5*time.Second, func() bool { return choose(b, "/s/", mine) == "/s/r0/" }, "the session remembered on r0 carries its probe")
}
