package replica_test

// End-to-end tests of the failure policy: three replicas in this process,
// each a full replica.Run with its own NATS connection and bucket watcher,
// on a real embedded nats-server with JetStream, driven as gecholog drives
// them.

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/matryer/is"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/gechologtest"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/natstest"
	"github.com/gecholog/broker/kv"
	"github.com/gecholog/broker/replica"
)

// fleet is replicas serving one embedded server, and a client of it.
type fleet struct {
	*replicaSet
	srv    *server.Server
	nc     *nats.Conn
	bucket jetstream.KeyValue
}

// startFleet runs n replicas with policy; plain pre-creates the bucket
// without limit markers, as a server without per-message TTL would have.
func startFleet(t *testing.T, n int, disabled time.Duration, policy broker.Policy, plain bool) *fleet {
	t.Helper()
	f := &fleet{srv: natstest.Start(t)}
	f.nc = natstest.Connect(t, f.srv)
	js, err := jetstream.New(f.nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if plain {
		if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "gl_broker"}); err != nil {
			t.Fatal(err)
		}
	}
	policy.DisabledTime = disabled
	f.replicaSet = runReplicas(t, replica.Config{NATS: natsconn.Settings{Servers: f.srv.ClientURL()}, Policy: policy}, n)
	if f.bucket, err = js.KeyValue(ctx, "gl_broker"); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fleet) record(t *testing.T, router string) (broker.Record, bool) {
	t.Helper()
	e, err := f.bucket.Get(context.Background(), router)
	if err != nil {
		return broker.Record{}, false
	}
	r, err := kv.Decode(router, e.Value())
	if err != nil {
		t.Fatalf("record %s: %v", router, err)
	}
	return r, true
}

func (f *fleet) put(t *testing.T, r broker.Record) {
	t.Helper()
	b, err := kv.Encode(r)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.bucket.Put(context.Background(), r.Router, b); err != nil {
		t.Fatal(err)
	}
}

// route makes a request-context call and returns the chosen router ("" for
// an empty answer).
func (f *fleet) route(t *testing.T) string {
	t.Helper()
	m, err := f.nc.Request("coburn.gl.broker", []byte(`{"gl_path":"/azure/"}`), 2*time.Second)
	if err != nil {
		t.Fatalf("request context: %v", err)
	}
	var r struct {
		GLPath string `json:"gl_path"`
	}
	if len(m.Data) > 0 {
		if err := json.Unmarshal(m.Data, &r); err != nil {
			t.Fatal(err)
		}
	}
	return r.GLPath
}

func (f *fleet) report(t *testing.T, msg string) {
	t.Helper()
	if _, err := f.nc.Request("coburn.gl.broker", []byte(msg), 2*time.Second); err != nil {
		t.Fatalf("response context: %v", err)
	}
}

func TestFailuresReportedToDifferentReplicasAddUpToTheThreshold(t *testing.T) {
	is := is.New(t)
	f := startFleet(t, 3, time.Minute, broker.Policy{Threshold: 3}, false)
	// report sends one response context through the queue group, so it
	// lands on any replica, and waits until every replica has counted it,
	// as gecholog's calls are spaced by the LLM's own latency.
	report := func(router string, status, failures int) {
		f.report(t, fmt.Sprintf(`{"gl_path":%q,"egress_status_code":%d}`, router, status))
		f.every(t, 2*time.Second, func(b *broker.Broker) bool {
			return b.Phase(router) == broker.Enabled && b.Failures(router) == failures
		}, fmt.Sprintf("%s counted %d", router, failures))
	}
	report("/azure/dud/", 502, 1)
	report("/azure/dud/", 502, 2)
	_, live := f.record(t, "/azure/dud/")
	is.True(!live)                 // two failures are not enough
	report("/azure/gpt4/", 200, 0) // another router's success does not reset it
	f.report(t, `{"gl_path":"/azure/dud/","egress_status_code":502}`)
	f.every(t, 2*time.Second, phaseIs("/azure/dud/", broker.Disabled), "the third failure disables")

	report("/azure/gpt4/", 502, 1)
	report("/azure/gpt4/", 502, 2)
	report("/azure/gpt4/", 200, 0) // a success resets the count
	report("/azure/gpt4/", 502, 1)
	report("/azure/gpt4/", 502, 2)
	_, live = f.record(t, "/azure/gpt4/")
	is.True(!live) // not disabled: never three in a row
}

func TestProbeIsSentExactlyOnceFleetWideIn100Repetitions(t *testing.T) {
	for _, mode := range []string{"ttl", "expiry"} {
		t.Run(mode, func(t *testing.T) {
			is := is.New(t)
			f := startFleet(t, 3, time.Minute, broker.Policy{}, mode == "expiry")
			for rep := range 100 {
				now := time.Now()
				f.put(t, broker.Record{Router: "/azure/dud/", Status: 502, Reason: "test", At: now.Add(-time.Minute), Until: now, By: "test"})
				// Every replica must have heard of the disable before the calls
				// start; before that, a replica still sends the router its share.
				f.every(t, 2*time.Second, phaseIs("/azure/dud/", broker.Probation), "on probation")
				// 6 callers send request contexts through the queue group, so
				// they land on every replica, until the probe has gone and a
				// further 60 calls have found no second one.
				var probes, after atomic.Int64
				var wg sync.WaitGroup
				deadline := time.Now().Add(5 * time.Second)
				for range 6 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for time.Now().Before(deadline) && after.Load() < 60 {
							if f.route(t) == "/azure/dud/" {
								probes.Add(1)
							} else if probes.Load() > 0 {
								after.Add(1)
							}
						}
					}()
				}
				wg.Wait()
				is.Equal(probes.Load(), int64(1)) // one probe, repetition rep
				r, _ := f.record(t, "/azure/dud/")
				is.True(r.Probe != nil) // claimed in the bucket
				is.NoErr(f.bucket.Delete(context.Background(), "/azure/dud/"))
				f.every(t, 2*time.Second, phaseIs("/azure/dud/", broker.Enabled), fmt.Sprint("reset ", rep))
			}
		})
	}
}

func TestProbeFailureBacksOffAndProbeSuccessEnables(t *testing.T) {
	is := is.New(t)
	f := startFleet(t, 3, time.Second, broker.Policy{}, false)
	f.report(t, `{"gl_path":"/azure/dud/","egress_status_code":502}`)
	f.every(t, 2*time.Second, phaseIs("/azure/dud/", broker.Disabled), "disabled")
	r, _ := f.record(t, "/azure/dud/")
	is.Equal(r.Level, 0)
	is.Equal(r.Until.Sub(r.At), time.Second)

	f.every(t, 3*time.Second, phaseIs("/azure/dud/", broker.Probation), "on probation")
	natstest.Eventually(t, 3*time.Second, func() bool { return f.route(t) == "/azure/dud/" }, "the probe goes out")
	f.report(t, `{"gl_path":"/azure/dud/","egress_status_code":502}`) // the probe fails
	f.every(t, 2*time.Second, phaseIs("/azure/dud/", broker.Disabled), "disabled again")
	r, _ = f.record(t, "/azure/dud/")
	is.Equal(r.Level, 1)                       // the next level
	is.Equal(r.Until.Sub(r.At), 2*time.Second) // twice as long
	is.True(r.Reason == "probe failed: egress_status_code 502")

	f.every(t, 4*time.Second, phaseIs("/azure/dud/", broker.Probation), "on probation again")
	natstest.Eventually(t, 3*time.Second, func() bool { return f.route(t) == "/azure/dud/" }, "the second probe goes out")
	f.report(t, `{"gl_path":"/azure/dud/","egress_status_code":200}`) // and succeeds
	f.every(t, 2*time.Second, phaseIs("/azure/dud/", broker.Enabled), "enabled")
	_, live := f.record(t, "/azure/dud/")
	is.True(!live) // `nats kv ls` no longer lists it

	// Failing again right away starts at the next level: it has not recovered.
	f.report(t, `{"gl_path":"/azure/dud/","egress_status_code":502}`)
	f.every(t, 2*time.Second, phaseIs("/azure/dud/", broker.Disabled), "disabled once more")
	r, _ = f.record(t, "/azure/dud/")
	is.Equal(r.Level, 2)
}

func TestRetryAfterFromTheUpstreamSetsTheDisabledTime(t *testing.T) {
	is := is.New(t)
	f := startFleet(t, 2, time.Minute, broker.Policy{}, false)
	f.report(t, `{"gl_path":"/azure/gpt4/","egress_status_code":429,"inbound_headers":{"retry-after":["7"],"Content-Type":["application/json"]}}`)
	f.every(t, 2*time.Second, phaseIs("/azure/gpt4/", broker.Disabled), "disabled")
	r, _ := f.record(t, "/azure/gpt4/")
	is.Equal(r.Until.Sub(r.At), 7*time.Second)

	// A longer Retry-After moves the deadline later; a shorter one does not.
	f.report(t, `{"gl_path":"/azure/gpt4/","egress_status_code":503,"inbound_headers":{"Retry-After":["1"]}}`)
	f.report(t, `{"gl_path":"/azure/gpt4/","egress_status_code":503,"inbound_headers":{"Retry-After":["40"]}}`)
	natstest.Eventually(t, 2*time.Second, func() bool {
		r2, _ := f.record(t, "/azure/gpt4/")
		return r2.Until.Sub(r.At) > 30*time.Second
	}, "extended by the longer Retry-After")
}

func TestManualDisableIsObeyedAndNeverTouchedByAutomaticRules(t *testing.T) {
	is := is.New(t)
	f := startFleet(t, 3, time.Second, broker.Policy{}, false)
	manual := broker.Record{Router: "/azure/gpt4/", Manual: true, Reason: "maintenance", At: time.Now(), By: "alice"}
	f.put(t, manual) // as `nats kv put` would
	f.every(t, time.Second, phaseIs("/azure/gpt4/", broker.Manual), "manual disable obeyed")
	for range 5 {
		f.report(t, `{"gl_path":"/azure/gpt4/","egress_status_code":502}`)
		f.report(t, `{"gl_path":"/azure/gpt4/","egress_status_code":200}`)
	}
	// Every other router disabled too: panic mode must not pick the manual one.
	f.report(t, `{"gl_path":"/azure/gpt35turbo/","egress_status_code":500}`)
	f.report(t, `{"gl_path":"/azure/dud/","egress_status_code":500}`)
	for range 30 {
		is.True(f.route(t) != "/azure/gpt4/") // never chosen, not even in panic mode
	}
	r, _ := f.record(t, "/azure/gpt4/")
	is.True(r.Manual && r.By == "alice") // never overwritten
	is.NoErr(f.bucket.Delete(context.Background(), "/azure/gpt4/"))
	f.every(t, time.Second, phaseIs("/azure/gpt4/", broker.Enabled), "enabled by hand")
}

func TestEveryRouterDisabledSendsCallsToTheOneBackSoonest(t *testing.T) {
	is := is.New(t)
	f := startFleet(t, 3, time.Minute, broker.Policy{}, false)
	now := time.Now()
	f.put(t, broker.Record{Router: "/azure/gpt35turbo/", At: now, Until: now.Add(3 * time.Minute)})
	f.put(t, broker.Record{Router: "/azure/gpt4/", At: now, Until: now.Add(time.Minute)})
	f.put(t, broker.Record{Router: "/azure/dud/", At: now, Until: now.Add(2 * time.Minute)})
	f.every(t, time.Second, func(b *broker.Broker) bool { return len(b.Routers("/azure/")) == 0 }, "all disabled")
	for range 30 {
		is.Equal(f.route(t), "/azure/gpt4/") // panic mode: the router whose disable ends soonest
	}
}

// TestDeadRouterCostsInFlightCallsPlusOnePerProbe is the number users feel:
// 8 callers drive three replicas gecholog-style while one router is dead
// for 5 × DISABLED_TIME, then healthy again.
func TestDeadRouterCostsInFlightCallsPlusOnePerProbe(t *testing.T) {
	is := is.New(t)
	const disabled = time.Second
	f := startFleet(t, 3, disabled, broker.Policy{}, false)

	var dead atomic.Bool
	l, err := net.Listen("tcp", "127.0.0.1:0")
	is.NoErr(err)
	flaky := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if dead.Load() {
			w.WriteHeader(http.StatusBadGateway)
		}
	})}
	go func() { _ = flaky.Serve(l) }()
	defer flaky.Close()
	ups, err := gechologtest.StartUpstreams()
	is.NoErr(err)
	defer ups.Close()
	ups.URLs["/azure/dud/"] = "http://" + l.Addr().String() + "/"
	gw := gechologtest.Gateway{NC: f.nc, Subject: "coburn.gl.broker", Upstreams: ups.URLs, Client: &http.Client{Timeout: 5 * time.Second}}

	var mu sync.Mutex
	type call struct {
		router     string
		status     int
		start, end time.Time
	}
	var calls []call
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < 100000; n++ {
				select {
				case <-stop:
					return
				default:
				}
				start := time.Now()
				router, status, err := gw.Call("/azure/")
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				calls = append(calls, call{router, status, start, time.Now()})
				mu.Unlock()
			}
		}()
	}
	time.Sleep(300 * time.Millisecond) // a healthy baseline before the failure
	died := time.Now()
	dead.Store(true)
	time.Sleep(5 * disabled)
	dead.Store(false)
	revived := time.Now()
	f.every(t, 20*time.Second, phaseIs("/azure/dud/", broker.Enabled), "dud back")
	enabled := time.Now()
	time.Sleep(time.Second) // its share after recovery
	close(stop)
	wg.Wait()

	var deadCalls, inFlight, afterShare, after int
	for _, c := range calls {
		if c.router == "/azure/dud/" && c.status == http.StatusBadGateway {
			deadCalls++
			if c.start.Before(died) {
				inFlight++
			}
		}
		if c.start.After(enabled) {
			after++
			if c.router == "/azure/dud/" {
				afterShare++
			}
		}
	}
	var deadProbes, liveProbes int
	for _, l := range f.logs {
		deadProbes += countLines(l.String(), "sending the probe call", died, revived)
		liveProbes += countLines(l.String(), "sending the probe call", revived, enabled)
	}
	t.Logf("dead for %v (5 × DISABLED_TIME %v), 8 callers: %d calls in all, %d to the dead router (%d already under way when it died), %d probes while dead; bound 8 in flight + %d probes = %d",
		revived.Sub(died).Round(time.Millisecond), disabled, len(calls), deadCalls, inFlight, deadProbes, deadProbes, 8+deadProbes)
	t.Logf("recovered: enabled %v after the upstream came back, by %d probe; share after recovery %d/%d = %.2f (full share 0.33)",
		enabled.Sub(revived).Round(time.Millisecond), liveProbes, afterShare, after, float64(afterShare)/float64(after))
	is.True(deadCalls <= 8+deadProbes) // at most the calls in flight plus one per probe
	is.True(deadProbes >= 1)           // the policy did probe while it was dead
	is.Equal(liveProbes, 1)            // back within one probe
	share := float64(afterShare) / float64(after)
	is.True(share > 0.25 && share < 0.42) // back to its full share
}

func TestFailureReportsAtEveryReplicaAtOnceMakeOneDisable(t *testing.T) {
	for _, mode := range []string{"ttl", "expiry"} {
		t.Run(mode, func(t *testing.T) {
			is := is.New(t)
			f := startFleet(t, 3, time.Minute, broker.Policy{}, mode == "expiry")
			stream, err := jetstream.New(f.nc)
			is.NoErr(err)
			kvStream, err := stream.Stream(context.Background(), "KV_gl_broker")
			is.NoErr(err)
			// 60 reports at once through the queue group: every replica gets
			// some before it has heard of any other's disable.
			var wg sync.WaitGroup
			for range 60 {
				wg.Go(func() { f.report(t, `{"gl_path":"/azure/dud/","egress_status_code":502}`) })
			}
			wg.Wait()
			f.every(t, 2*time.Second, phaseIs("/azure/dud/", broker.Disabled), "disabled")
			f.stop() // every write attempt done
			info, err := kvStream.Info(context.Background())
			is.NoErr(err)
			// The bucket keeps one revision per key, so count what was ever
			// written by the stream's sequence: the bucket was empty before.
			is.Equal(info.State.LastSeq, uint64(1)) // one write landed: compare-and-set, not a race of overwrites
			var attempts uint64
			for _, b := range f.replicas {
				attempts += b.Stats().KVWrites
			}
			t.Logf("%s: 60 simultaneous reports, %d write attempts, 1 landed", mode, attempts)
		})
	}
}
