package e2e

import (
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/matryer/is"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/internal/standin"
	"github.com/gecholog/broker/internal/testutil/natstest"
)

// The rule: 20% of at least 20 calls in 30 s. The threshold is
// set above any run of failures the schedules make, so that only the rule
// can take the flaky router out.
const (
	ruleRate, ruleMinCalls = 20, 20
	callers                = 8 // calls in flight at once
)

// flakyFleet runs 3 replica processes with the rule on a pool of a flaky
// router, whose upstream's i-th call fails with 502 when fails(i), and,
// with healthy, a healthy one. It returns the gateway, the flaky upstream's call count and
// the bucket's stream.
func flakyFleet(t *testing.T, fails func(i int64) bool, healthy bool) (standin.Gateway, *atomic.Int64, jetstream.JetStream) {
	t.Helper()
	s := natstest.Start(t)
	routers := `{"path":"/azure/flaky/"}`
	if healthy {
		routers += `,{"path":"/azure/gpt4/"}`
	}
	pools := poolsFile(t, `{"pools":[{"ingress":"/azure/","routers":[`+routers+`]}]}`)
	startReplicas(t, s, 3, "BROKER_POOLS", pools, "BROKER_FAILURE_THRESHOLD", "10",
		"BROKER_FAILURE_RATE", "20", "BROKER_FAILURE_RATE_WINDOW", "30s", "BROKER_FAILURE_RATE_MIN_CALLS", "20")
	var calls atomic.Int64
	ups := &standin.Upstreams{}
	client := standin.NewClient(30 * time.Second)
	t.Cleanup(func() { client.CloseIdleConnections(); ups.Close() })
	for router, h := range map[string]http.HandlerFunc{
		"/azure/flaky/": func(w http.ResponseWriter, _ *http.Request) {
			if fails(calls.Add(1) - 1) {
				w.WriteHeader(http.StatusBadGateway)
			}
		},
		"/azure/gpt4/": func(http.ResponseWriter, *http.Request) {},
	} {
		if err := ups.Add(router, h); err != nil {
			t.Fatal(err)
		}
	}
	nc := natstest.Connect(t, s)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return standin.Gateway{NC: nc, Subject: brokerTopic, Upstreams: ups.URLs, Client: client,
		Logger: "coburn.gl.logger", Timeout: callTimeout}, &calls, js
}

// run makes n calls, callers at a time, and fails the test on any that the
// broker did not answer.
func run(t *testing.T, gw standin.Gateway, n int) {
	t.Helper()
	var mu sync.Mutex
	var first error
	gw.Run(t.Context(), "/azure/", n, callers, func(_ standin.Result, err error) {
		mu.Lock()
		defer mu.Unlock()
		if err != nil && first == nil {
			first = err
		}
	})
	if first != nil {
		t.Fatal(first)
	}
}

func TestAFlakyRouterIsTakenOutByTheFailureRateWithCallsInFlight(t *testing.T) {
	t.Parallel()
	is := is.New(t)
	thirty := func(i int64) bool { return i%10 < 3 }
	gw, flaky, js := flakyFleet(t, thirty, true)
	before := lastSeq(t, js)
	run(t, gw, 400)
	// The rate reaches 20% at the flaky router's 20th call (6 failed);
	// from there, it gets at most min calls more, plus those in flight.
	const crossing = 20
	got := flaky.Load()
	is.True(got <= crossing+ruleMinCalls+callers) // out within min calls plus calls in flight after the crossing
	bucket := openBucket(t, gw.NC)
	waitKeys(t, bucket, 5*time.Second, "/azure/flaky/")
	rec := readRecord(t, bucket, "/azure/flaky/")
	is.True(strings.HasPrefix(rec.Reason, "failure rate ")) // the rule that fired
	is.True(strings.HasSuffix(rec.Reason, " calls in 30s")) // with its figures
	is.Equal(lastSeq(t, js)-before, uint64(1))              // exactly one write
	t.Logf("the flaky router took %d of 400 calls, %d after the rate crossed; %q", got, got-crossing, rec.Reason)
}

func TestARouterFailingFivePercentStaysInOverTenThousandCalls(t *testing.T) {
	t.Parallel()
	is := is.New(t)
	gw, flaky, js := flakyFleet(t, func(i int64) bool { return i%20 == 0 }, false)
	before := lastSeq(t, js)
	start := time.Now()
	run(t, gw, 10_000)
	is.Equal(flaky.Load(), int64(10_000))        // every call went to it
	is.Equal(lastSeq(t, js), before)             // nothing written
	is.Equal(keys(t, openBucket(t, gw.NC)), nil) // never out
	t.Logf("%d calls to the router failing 5%% in %v", flaky.Load(), time.Since(start).Round(time.Millisecond))
}

// DISABLED_TIME=0.005 is 0.3 s: a fraction of a second, as the original
// read it. The key's TTL is a whole second, but every replica ends the
// disable at the record's until, by its own clock, in both modes.
func TestAFractionOfASecondDisablesFor300msOnEveryReplicaProcess(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"ttl", "expiry"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			is := is.New(t)
			s, nc := serverIn(t, mode)
			replicas := startReplicas(t, s, 3, "DISABLED_TIME", "0.005")
			for _, r := range replicas {
				is.Equal(r.serving.attrs["ttl_mode"], mode)
				is.Equal(r.serving.attrs["disabled_time"], "300ms") // said at startup
			}
			is.NoErr(newGateway(t, s).report(dud, 502))
			bucket := openBucket(t, nc)
			waitKeys(t, bucket, 5*time.Second, dud)
			rec := readRecord(t, bucket, dud)
			is.Equal(rec.Until.Sub(rec.At), 300*time.Millisecond) // exact in the record
			var ended []time.Duration
			for _, r := range replicas {
				l := r.waitFor(t, 5*time.Second, logged("router on probation: one probe call decides", "router", dud))
				d := l.at.Sub(rec.At)
				if d < 250*time.Millisecond || d > 350*time.Millisecond {
					t.Errorf("%s ended the disable %v after it began, not 0.3 s ± 50 ms", r.id, d)
				}
				ended = append(ended, d)
			}
			t.Logf("%s: the disable ended on the replicas after %v", mode, ended)
		})
	}
}
