package broker_test

import (
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
)

// stirred says whether b's Stirred has a word waiting.
func stirred(b *broker.Broker) bool {
	select {
	case <-b.Stirred():
		return true
	default:
		return false
	}
}

func TestAReplicaWithoutCallsMayWaitForItsHeartbeat(t *testing.T) {
	is := is.New(t)
	b, _ := newBroker(t, broker.Config{})
	now := time.Now()
	b.Refresh(now)
	is.Equal(b.Quiet(now, time.Second), time.Second) // nothing to slide, nothing held: the heartbeat
}

func TestACallStirsAQuietReplica(t *testing.T) {
	is := is.New(t)
	b, _ := newBroker(t, broker.Config{})
	now := time.Now()
	b.Refresh(now)
	b.Quiet(now, time.Second)
	is.True(!stirred(b)) // nothing yet
	pick(b, "/azure/")
	is.True(stirred(b)) // the call wakes it
	pick(b, "/azure/")
	is.True(!stirred(b)) // once: it ticks again until the next Quiet
}

func TestAReportAndAnotherReplicasNewCountsStirAQuietReplica(t *testing.T) {
	is := is.New(t)
	b, _ := newBroker(t, broker.Config{})
	now := time.Now()
	b.Refresh(now)
	b.Quiet(now, time.Second)
	report(b, "/azure/gpt4/", 200)
	is.True(stirred(b)) // a report

	b.Quiet(now, time.Second)
	b.Merge("replica-2", now, []broker.Counts{{Router: "/azure/gpt4/", Chosen: 3}})
	is.True(stirred(b)) // the fleet has calls
	b.Quiet(now, time.Second)
	b.Merge("replica-2", now, []broker.Counts{{Router: "/azure/gpt4/", Chosen: 3}})
	is.True(!stirred(b)) // the same counts again: a heartbeat, nothing new
}

func TestACallSinceTheLastRefreshIsToldAtOnce(t *testing.T) {
	is := is.New(t)
	b, _ := newBroker(t, broker.Config{})
	now := time.Now()
	b.Refresh(now)
	pick(b, "/azure/") // before Quiet: no stir, yet it must not wait
	is.Equal(b.Quiet(now, time.Second), time.Duration(0))
}

func TestCountsInTheirWindowsWakeTheReplicaWhenTheySlideOut(t *testing.T) {
	is := is.New(t)
	bound := 12 * time.Second // slots of 100 ms
	b, _ := newBroker(t, broker.Config{InFlightBound: bound})
	now := time.Now()
	b.Refresh(now)
	pick(b, "/azure/")
	b.Refresh(now)
	wait := b.Quiet(now, time.Minute)
	// The call slides out of the in-flight bound's window a bound on, not
	// before; the failure-rate window (a minute) is longer.
	is.True(wait <= bound)
	is.True(wait > bound-200*time.Millisecond)
	later := now.Add(wait)
	b.Refresh(later)
	is.Equal(b.Quiet(later, time.Minute) > 0, true) // the calls window still holds it
}

func TestAPoolReadsTheFleetsCallsInFlightByItsStrategyAffinityOrBudget(t *testing.T) {
	routers := []broker.Router{{Path: "/p/a/", Weight: 1}, {Path: "/p/b/", Weight: 1}}
	budget := &broker.Budget{TokensPerMinute: 1000}
	cases := []struct {
		name string
		pool broker.Pool
		want bool
	}{
		{"random", broker.Pool{Ingress: "/p/", Routers: routers}, false},
		{"least-busy", broker.Pool{Ingress: "/p/", Routers: routers, Strategy: "least-busy"}, true},
		{"headroom", broker.Pool{Ingress: "/p/", Routers: routers, Strategy: "headroom"}, true},
		{"random with session affinity", broker.Pool{Ingress: "/p/", Routers: routers, Affinity: broker.Affinity{Session: true}}, true},
		{"random with a pool budget", broker.Pool{Ingress: "/p/", Routers: routers, Budget: budget}, true},
		{"random with a router's budget", broker.Pool{Ingress: "/p/", Routers: []broker.Router{{Path: "/p/a/", Weight: 1, Budget: budget}}}, true},
	}
	for _, c := range cases {
		if got := c.pool.ReadsInFlight(); got != c.want {
			t.Errorf("%s: ReadsInFlight %v, want %v", c.name, got, c.want)
		}
	}
	b, _ := newBroker(t, broker.Config{})
	is.New(t).Equal(b.ReadsInFlight(), false) // the default pool is random
}
