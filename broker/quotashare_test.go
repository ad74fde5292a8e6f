package broker_test

import (
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
)

// ptuPool is issue 23's tiers: a PTU deployment on tier 0, pay-as-you-go
// on tier 1, chosen by headroom.
func ptuPool() []broker.Pool {
	return []broker.Pool{{Ingress: "/azure/", Strategy: "headroom", Routers: []broker.Router{
		{Path: "/azure/ptu/", Weight: 1}, {Path: "/azure/payg/", Weight: 1, Priority: 1}}}}
}

// left is an answer of the PTU saying n of its 100 requests are left
// until reset, its call sent at sent and answered a millisecond later.
func left(n int64, sent, reset time.Time) *broker.RateLimits {
	return &broker.RateLimits{RemainingRequests: n, LimitRequests: 100, RemainingTokens: -1, LimitTokens: -1,
		ResetRequests: reset, Sent: sent, Answered: sent.Add(time.Millisecond)}
}

// ptuCalls is how many of n calls b sends to the PTU.
func ptuCalls(b *broker.Broker, n int) int {
	got := 0
	for range n {
		if pick(b, "/azure/") == "/azure/ptu/" {
			got++
		}
	}
	return got
}

// past waits until the clock has moved d beyond from.
func past(from time.Time, d time.Duration) {
	for wait := d - time.Since(from); wait > 0; wait = d - time.Since(from) {
		<-time.After(wait)
	}
}

// An upstream's count of requests left already holds every call that
// reached it before the answered call: the calls still in flight that
// were sent before it take nothing more off, or a PTU stops short of its
// quota each window (issue 23: 3 left, 3 in flight, and no call to the
// PTU though it would have taken three).
func TestHeadroomTakesOffOnlyTheCallsChosenSinceTheAnsweredCallWasSent(t *testing.T) {
	is := is.New(t)
	b, _ := newBroker(t, broker.Config{Pools: ptuPool()})
	is.Equal(ptuCalls(b, 4), 4) // four calls in flight, no report yet
	chosen := time.Now()
	past(chosen, 20*time.Millisecond)
	// The fourth's answer: 3 left, the four counted.
	sent := time.Now()
	is.NoErr(b.Finished([]byte("/azure/ptu/"), time.Millisecond, left(3, sent, sent.Add(5*time.Second))))
	is.Equal(ptuCalls(b, 5), 3) // three more to the PTU, then tier 1
}

// Replicas see each other's choices only when told: were what a window's
// first answer says is left every replica's to take, three would send
// three times that between two words. Each takes its share, and the
// shares add up to what is left, remainder and all.
func TestReplicasShareWhatTheFirstAnswerOfAWindowSaysIsLeft(t *testing.T) {
	for _, n := range []int64{6, 7, 8, 1} {
		is := is.New(t)
		ids := []string{"a", "b", "c"}
		var fleet []*broker.Broker
		for _, id := range ids {
			b, _ := newBroker(t, broker.Config{ID: id, Pools: ptuPool()})
			fleet = append(fleet, b)
		}
		for i, b := range fleet {
			for j, id := range ids {
				if i != j {
					b.Merge(id, time.Now(), nil) // three replicas telling their counts
				}
			}
		}
		sent := time.Now()
		sum := 0
		for _, b := range fleet {
			is.NoErr(b.Finished([]byte("/azure/ptu/"), time.Millisecond, left(n, sent, sent.Add(5*time.Second))))
			got := ptuCalls(b, 10)
			is.True(int64(got) <= (n+2)/3) // no more than its share
			sum += got
		}
		is.Equal(int64(sum), n) // the shares add up to what is left
	}
}

// A later answer of the same window, in whatever order the answers come,
// leaves each replica's share as it was (so that a replica that took its
// share before the answer came is not given more for the calls it already
// sent), and the next window's first answer splits anew.
func TestAShareStandsForItsWindowAndIsSplitAnewForTheNext(t *testing.T) {
	is := is.New(t)
	b, _ := newBroker(t, broker.Config{ID: "a", Pools: ptuPool()})
	b.Merge("b", time.Now(), nil) // two replicas: a's share of 9 is 4
	sent := time.Now()
	reset := sent.Add(200 * time.Millisecond)
	is.NoErr(b.Finished([]byte("/azure/ptu/"), time.Millisecond, left(9, sent, reset)))
	is.Equal(ptuCalls(b, 3), 3)
	// An answer of a call sent after those three, the others' calls
	// counted too: 2 left of the window, but a's share is 1 more call.
	past(time.Now(), 20*time.Millisecond)
	later := time.Now()
	is.NoErr(b.Finished([]byte("/azure/ptu/"), time.Millisecond, left(2, later, reset)))
	is.Equal(ptuCalls(b, 3), 1)
	// The next window: its first answer's call was sent after the reset.
	past(reset, time.Millisecond)
	next := time.Now()
	is.NoErr(b.Finished([]byte("/azure/ptu/"), time.Millisecond, left(9, next, next.Add(time.Hour))))
	is.Equal(ptuCalls(b, 6), 4) // a's share of the new window
}

// gecholog publishes a transaction when its response processors are done,
// so a call answered earlier may be heard later: what it said of what is
// left is older than what the replica holds, and is not taken.
func TestAnAnswerHeardAfterALaterOneDoesNotOverwriteIt(t *testing.T) {
	is := is.New(t)
	b, _ := newBroker(t, broker.Config{Pools: ptuPool()})
	sent := time.Now()
	reset := sent.Add(time.Hour)
	is.NoErr(b.Finished([]byte("/azure/ptu/"), time.Millisecond, left(0, sent.Add(time.Millisecond), reset)))
	is.NoErr(b.Finished([]byte("/azure/ptu/"), time.Millisecond, left(50, sent, reset))) // answered before the 0
	is.Equal(ptuCalls(b, 3), 0)                                                          // none left, as the newest said
}
