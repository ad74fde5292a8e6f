package replica_test

// End-to-end tests of the failure policy: three replicas in this process,
// each a full replica.Run with its own NATS connection and bucket watcher,
// on real nats-servers with JetStream (the embedded 2.15 and, in the tests
// that run in every mode, a nats-server 2.10 process), driven as gecholog
// drives them.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/matryer/is"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/standin"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/kv"
	"github.com/gecholog/broker/replica"
)

// fleet is replicas serving one server, and a client of it.
type fleet struct {
	*replicaSet
	nc     *nats.Conn
	bucket jetstream.KeyValue
	stream jetstream.Stream
}

// startFleet runs n replicas with policy on a new embedded server; plain
// pre-creates the bucket without limit markers, as a server without
// per-message TTL would have.
func startFleet(t *testing.T, n int, disabled time.Duration, policy broker.Policy, plain bool) *fleet {
	t.Helper()
	policy.DisabledTime = disabled
	return newFleet(t, natstest.Start(t).ClientURL(), "", plain, n, policy)
}

// startFleetIn runs n replicas with policy on a new server of mode m.
func startFleetIn(t *testing.T, m serverMode, n int, policy broker.Policy) *fleet {
	t.Helper()
	return newFleet(t, m.start(t).url, "", m.plain, n, policy)
}

// newFleet runs n replicas with policy on the server at url, which they
// reach through via when it is set (a natstest.Proxy). The test's own
// client connects to url directly.
func newFleet(t *testing.T, url, via string, plain bool, n int, policy broker.Policy) *fleet {
	t.Helper()
	f := &fleet{nc: natstest.ConnectURL(t, url)}
	js, err := jetstream.New(f.nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if plain {
		if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "gl_broker"}); err != nil {
			t.Fatal(err)
		}
	}
	if via == "" {
		via = url
	}
	f.replicaSet = runReplicas(t, replica.Config{NATS: natsconn.Settings{Servers: via}, Policy: policy}, n)
	if f.bucket, err = js.KeyValue(ctx, "gl_broker"); err != nil {
		t.Fatal(err)
	}
	if f.stream, err = js.Stream(ctx, "KV_gl_broker"); err != nil {
		t.Fatal(err)
	}
	return f
}

// record reads router's live record from the bucket (see readRecord).
func (f *fleet) record(t *testing.T, router string) (r broker.Record, live bool) {
	t.Helper()
	return readRecord(t, f.bucket, router)
}

// readRecord reads router's live record from bucket; live is false when
// the key does not exist or is deleted. Any other error (a timeout, a
// missing bucket) fails the test rather than pass for "not live".
func readRecord(t *testing.T, bucket jetstream.KeyValue, router string) (r broker.Record, live bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	e, err := bucket.Get(ctx, router)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return broker.Record{}, false
	}
	if err != nil {
		t.Fatalf("read %s from the bucket: %v", router, err)
	}
	if r, err = kv.Decode(router, e.Value()); err != nil {
		t.Fatalf("record %s: %v", router, err)
	}
	return r, true
}

// waitRecord waits until router has a live record in the bucket and
// returns it.
func (f *fleet) waitRecord(t *testing.T, router string, d time.Duration) broker.Record {
	t.Helper()
	var r broker.Record
	natstest.Eventually(t, d, func() bool {
		var live bool
		r, live = f.record(t, router)
		return live
	}, "a record for %s in the bucket", router)
	return r
}

// last returns the last message on router's key, live record or marker;
// ok is false when the key has never had one.
func (f *fleet) last(t *testing.T, router string) (m *jetstream.RawStreamMsg, ok bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m, err := f.stream.GetLastMsgForSubject(ctx, "$KV.gl_broker."+router)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, false
	}
	if err != nil {
		t.Fatalf("read the last message of %s: %v", router, err)
	}
	return m, true
}

// lastSeq is the bucket stream's last sequence: how many messages were
// ever written to it, as the bucket keeps only one revision per key.
func (f *fleet) lastSeq(t *testing.T) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	info, err := f.stream.Info(ctx)
	if err != nil {
		t.Fatalf("bucket stream info: %v", err)
	}
	return info.State.LastSeq
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

// tryRoute makes a request-context call and returns the chosen router (""
// for an empty answer). It is safe on any goroutine.
func (f *fleet) tryRoute() (string, error) {
	m, err := f.nc.Request("coburn.gl.broker", []byte(`{"gl_path":"/azure/"}`), 2*time.Second)
	if err != nil {
		return "", fmt.Errorf("request context: %w", err)
	}
	var r struct {
		GLPath string `json:"gl_path"`
	}
	if len(m.Data) > 0 {
		if err := json.Unmarshal(m.Data, &r); err != nil {
			return "", fmt.Errorf("request context reply %q: %w", m.Data, err)
		}
	}
	return r.GLPath, nil
}

// route is tryRoute on the test's goroutine, failing the test on an error.
func (f *fleet) route(t *testing.T) string {
	t.Helper()
	r, err := f.tryRoute()
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// tryReport sends a response context and waits for its answer. It is safe
// on any goroutine.
func (f *fleet) tryReport(msg string) error {
	if _, err := f.nc.Request("coburn.gl.broker", []byte(msg), 2*time.Second); err != nil {
		return fmt.Errorf("response context: %w", err)
	}
	return nil
}

// report is tryReport on the test's goroutine, failing the test on an error.
func (f *fleet) report(t *testing.T, msg string) {
	t.Helper()
	if err := f.tryReport(msg); err != nil {
		t.Fatal(err)
	}
}

// panicked is how many request contexts the replicas have answered by the
// all-disabled rule.
func (f *fleet) panicked() uint64 {
	var n uint64
	for _, b := range f.replicas {
		n += b.Stats().Calls[broker.Panicked]
	}
	return n
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
	eachMode(t, serverModes(), func(t *testing.T, m serverMode) {
		is := is.New(t)
		f := startFleetIn(t, m, 3, broker.Policy{DisabledTime: time.Minute})
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
			errs := make(chan error, 6)
			var wg sync.WaitGroup
			deadline := time.Now().Add(5 * time.Second)
			for range 6 {
				wg.Go(func() {
					for time.Now().Before(deadline) && after.Load() < 60 {
						r, err := f.tryRoute()
						if err != nil {
							errs <- err
							return
						}
						if r == "/azure/dud/" {
							probes.Add(1)
						} else if probes.Load() > 0 {
							after.Add(1)
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatalf("repetition %d: %v", rep, err)
			}
			is.Equal(probes.Load(), int64(1)) // one probe, repetition rep
			is.True(after.Load() >= 60)       // and 60 calls after it found no second one
			r, live := f.record(t, "/azure/dud/")
			is.True(live && r.Probe != nil) // claimed in the bucket
			is.NoErr(f.bucket.Delete(context.Background(), "/azure/dud/"))
			f.every(t, 2*time.Second, phaseIs("/azure/dud/", broker.Enabled), fmt.Sprint("reset ", rep))
		}
	})
}

func TestProbeFailureBacksOffAndProbeSuccessEnables(t *testing.T) {
	is := is.New(t)
	f := startFleet(t, 3, time.Second, broker.Policy{}, false)
	f.report(t, `{"gl_path":"/azure/dud/","egress_status_code":502}`)
	f.every(t, 2*time.Second, phaseIs("/azure/dud/", broker.Disabled), "disabled")
	r := f.waitRecord(t, "/azure/dud/", 2*time.Second)
	is.Equal(r.Level, 0)
	is.Equal(r.Until.Sub(r.At), time.Second)

	f.every(t, 3*time.Second, phaseIs("/azure/dud/", broker.Probation), "on probation")
	natstest.Eventually(t, 3*time.Second, func() bool { return f.route(t) == "/azure/dud/" }, "the probe goes out")
	f.report(t, `{"gl_path":"/azure/dud/","egress_status_code":502}`) // the probe fails
	f.every(t, 2*time.Second, phaseIs("/azure/dud/", broker.Disabled), "disabled again")
	natstest.Eventually(t, 2*time.Second, func() bool {
		r, _ = f.record(t, "/azure/dud/")
		return r.Level == 1
	}, "the failed probe's record in the bucket")
	is.Equal(r.Until.Sub(r.At), 2*time.Second)                 // twice as long
	is.Equal(r.Reason, "probe failed: egress_status_code 502") // why it is out again

	f.every(t, 4*time.Second, phaseIs("/azure/dud/", broker.Probation), "on probation again")
	natstest.Eventually(t, 3*time.Second, func() bool { return f.route(t) == "/azure/dud/" }, "the second probe goes out")
	f.report(t, `{"gl_path":"/azure/dud/","egress_status_code":200}`) // and succeeds
	f.every(t, 2*time.Second, phaseIs("/azure/dud/", broker.Enabled), "enabled")
	natstest.Eventually(t, 2*time.Second, func() bool {
		_, live := f.record(t, "/azure/dud/")
		return !live
	}, "`nats kv ls` no longer lists it")

	// Failing again right away starts at the next level: it has not recovered.
	f.report(t, `{"gl_path":"/azure/dud/","egress_status_code":502}`)
	f.every(t, 2*time.Second, phaseIs("/azure/dud/", broker.Disabled), "disabled once more")
	r = f.waitRecord(t, "/azure/dud/", 2*time.Second)
	is.Equal(r.Level, 2)
}

func TestRetryAfterFromTheUpstreamSetsTheDisabledTime(t *testing.T) {
	is := is.New(t)
	f := startFleet(t, 2, time.Minute, broker.Policy{}, false)
	f.report(t, `{"gl_path":"/azure/gpt4/","egress_status_code":429,"inbound_headers":{"retry-after":["7"],"Content-Type":["application/json"]}}`)
	f.every(t, 2*time.Second, phaseIs("/azure/gpt4/", broker.Disabled), "disabled")
	r := f.waitRecord(t, "/azure/gpt4/", 2*time.Second)
	is.Equal(r.Until.Sub(r.At), 7*time.Second)
	is.Equal(f.lastSeq(t), uint64(1)) // the one write so far

	// A shorter Retry-After does not shorten the disable: the record stays.
	f.report(t, `{"gl_path":"/azure/gpt4/","egress_status_code":503,"inbound_headers":{"Retry-After":["1"]}}`)
	now, live := f.record(t, "/azure/gpt4/")
	is.True(live)                     // the router is out again in the bucket
	is.True(now.Until.Equal(r.Until)) // not shortened
	f.every(t, time.Second, phaseIs("/azure/gpt4/", broker.Disabled), "still disabled")

	// A longer one moves the deadline later.
	f.report(t, `{"gl_path":"/azure/gpt4/","egress_status_code":503,"inbound_headers":{"Retry-After":["40"]}}`)
	natstest.Eventually(t, 2*time.Second, func() bool {
		r2, _ := f.record(t, "/azure/gpt4/")
		return r2.Until.Sub(r.At) > 30*time.Second
	}, "extended by the longer Retry-After")

	// Once every write has finished, the bucket holds exactly two: the
	// first disable and the longer Retry-After. The shorter report wrote
	// nothing, then or later.
	f.stop()
	is.Equal(f.lastSeq(t), uint64(2))
	final, live := f.record(t, "/azure/gpt4/")
	is.True(live)                                              // the router is out again in the bucket
	is.True(final.Until.Sub(r.At) > 30*time.Second)            // the disable backed off past the first 30 s
	is.True(strings.Contains(final.Reason, "Retry-After 40s")) // the longer report's record
}

func TestManualDisableIsObeyedAndNeverTouchedByAutomaticRules(t *testing.T) {
	is := is.New(t)
	f := startFleet(t, 3, time.Minute, broker.Policy{}, false)
	manual := broker.Record{Router: "/azure/gpt4/", Manual: true, Reason: "maintenance", At: time.Now(), By: "alice"}
	f.put(t, manual) // as `nats kv put` would
	f.every(t, 5*time.Second, phaseIs("/azure/gpt4/", broker.Manual), "manual disable obeyed")
	for range 5 {
		f.report(t, `{"gl_path":"/azure/gpt4/","egress_status_code":502}`)
		f.report(t, `{"gl_path":"/azure/gpt4/","egress_status_code":200}`)
	}
	// Every other router disabled too: panic mode must not pick the manual one.
	f.report(t, `{"gl_path":"/azure/gpt35turbo/","egress_status_code":500}`)
	f.report(t, `{"gl_path":"/azure/dud/","egress_status_code":500}`)
	f.every(t, 2*time.Second, func(b *broker.Broker) bool { return len(b.Routers("/azure/")) == 0 }, "no router of the pool enabled")
	before := f.panicked()
	for range 30 {
		// Panic mode: the router whose disable ends soonest (gpt35turbo's,
		// reported first), never the manual one.
		is.Equal(f.route(t), "/azure/gpt35turbo/")
	}
	is.Equal(f.panicked()-before, uint64(30)) // each of them answered in panic mode
	r, live := f.record(t, "/azure/gpt4/")
	is.True(live && r.Manual && r.By == "alice") // never overwritten
	last, _ := f.last(t, "/azure/gpt4/")
	is.Equal(last.Sequence, uint64(1)) // nor written at all: the key's last message is still the put
	is.NoErr(f.bucket.Delete(context.Background(), "/azure/gpt4/"))
	f.every(t, 5*time.Second, phaseIs("/azure/gpt4/", broker.Enabled), "enabled by hand")
}

func TestEveryRouterDisabledSendsCallsToTheOneBackSoonest(t *testing.T) {
	is := is.New(t)
	f := startFleet(t, 3, time.Minute, broker.Policy{}, false)
	now := time.Now()
	f.put(t, broker.Record{Router: "/azure/gpt35turbo/", At: now, Until: now.Add(3 * time.Minute)})
	f.put(t, broker.Record{Router: "/azure/gpt4/", At: now, Until: now.Add(time.Minute)})
	f.put(t, broker.Record{Router: "/azure/dud/", At: now, Until: now.Add(2 * time.Minute)})
	f.every(t, 5*time.Second, func(b *broker.Broker) bool { return len(b.Routers("/azure/")) == 0 }, "all disabled")
	before := f.panicked()
	for range 30 {
		is.Equal(f.route(t), "/azure/gpt4/") // panic mode: the router whose disable ends soonest
	}
	is.Equal(f.panicked()-before, uint64(30)) // each of them answered in panic mode
}

// TestADisableReportedToOneReplicaReachesEveryReplicaAndEndsAtItsUntil
// follows one disable through its life in each mode. In expiry mode (a
// plain bucket, and nats-server 2.10, which has no per-message TTL) no
// server tells the replicas when it ends: each must end it by its own
// clock at the record's Until, and the writer's janitor deletes the key.
func TestADisableReportedToOneReplicaReachesEveryReplicaAndEndsAtItsUntil(t *testing.T) {
	const router = "/azure/dud/"
	eachMode(t, serverModes(), func(t *testing.T, m serverMode) {
		is := is.New(t)
		// The probe timeout is also how long the key outlives Until.
		f := startFleetIn(t, m, 3, broker.Policy{DisabledTime: 2 * time.Second, ProbeTimeout: time.Second})
		f.replicas[0].Report([]byte(router), 502, 0)
		is.Equal(f.replicas[0].Phase(router), broker.Disabled) // at once on the replica that heard it
		r := f.waitRecord(t, router, time.Second)
		is.Equal(r.By, "replica-1")
		is.Equal(r.Until.Sub(r.At), 2*time.Second)
		// Everyone hears of it well before it ends.
		f.every(t, time.Second, phaseIs(router, broker.Disabled), "disabled")

		// It ends at its Until on every replica: not before, and not
		// later than a timer and this loop's polling take on a loaded
		// machine.
		ended := make([]time.Time, len(f.replicas))
		natstest.Eventually(t, time.Until(r.Until)+2*time.Second, func() bool {
			all := true
			for i, b := range f.replicas {
				if ended[i].IsZero() && b.Phase(router) != broker.Disabled {
					ended[i] = time.Now()
				}
				all = all && !ended[i].IsZero()
			}
			return all
		}, "the disable ends on every replica")
		for i, e := range ended {
			is.True(!e.Before(r.Until))                    // not before its Until
			is.True(e.Sub(r.Until) < 500*time.Millisecond) // nor long after
			t.Logf("replica-%d ended it %v after Until", i+1, e.Sub(r.Until).Round(time.Millisecond))
		}

		// Nobody probes it (no calls), so the key goes a probe timeout
		// after Until: deleted by the writer's janitor in expiry mode,
		// expired by the server in ttl mode (TTLs are whole seconds, so
		// up to a second later).
		keep := r.Until.Add(time.Second)
		var marker *jetstream.RawStreamMsg
		natstest.Eventually(t, time.Until(keep)+3*time.Second, func() bool {
			m, ok := f.last(t, router)
			if ok && (m.Header.Get("KV-Operation") != "" || m.Header.Get("Nats-Marker-Reason") != "") {
				marker = m
			}
			return marker != nil
		}, "the key is deleted")
		_, live := f.record(t, router)
		is.True(!live)                     // `nats kv ls` no longer lists it
		is.True(!marker.Time.Before(keep)) // not before its time
		if m.mode == "expiry" {
			is.Equal(marker.Header.Get("KV-Operation"), "DEL")
			memo, err := kv.Decode(router, marker.Data)
			is.NoErr(err)
			is.Equal(memo.By, "replica-1") // the writer deleted it
			is.Equal(memo.Reason, broker.ReasonExpired)
		} else {
			is.Equal(marker.Header.Get("Nats-Marker-Reason"), "MaxAge") // the server expired it
		}
		f.every(t, 2*time.Second, phaseIs(router, broker.Enabled), "enabled")
	})
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
	ups, err := standin.StartUpstreams()
	is.NoErr(err)
	defer ups.Close()
	ups.URLs["/azure/dud/"] = "http://" + l.Addr().String() + "/"
	gw := standin.Gateway{NC: f.nc, Subject: "coburn.gl.broker", Upstreams: ups.URLs, Client: &http.Client{Timeout: 5 * time.Second}}

	var mu sync.Mutex
	type call struct {
		router     string
		status     int
		start, end time.Time
	}
	var calls []call
	since := func(from time.Time) int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, c := range calls {
			if !c.start.Before(from) {
				n++
			}
		}
		return n
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	end := time.Now().Add(natstest.MaxLoadTime) // a safety bound: the test stops the callers
	for range 8 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				start := time.Now()
				if start.After(end) {
					t.Errorf("callers still running after %v", natstest.MaxLoadTime)
					return
				}
				router, status, err := gw.Call("/azure/")
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				calls = append(calls, call{router, status, start, time.Now()})
				mu.Unlock()
			}
		})
	}
	defer func() { close(stop); wg.Wait() }()
	natstest.Eventually(t, 10*time.Second, func() bool { return since(time.Time{}) >= 100 }, "100 healthy calls before the failure")
	died := time.Now()
	dead.Store(true)
	time.Sleep(5 * disabled) // the outage itself, not a wait for something to happen
	dead.Store(false)
	revived := time.Now()
	f.every(t, 20*time.Second, phaseIs("/azure/dud/", broker.Enabled), "dud back")
	enabled := time.Now()
	// Its share after recovery: the next 600 calls, however long they take.
	// With a third of them expected, 0.25 and 0.42 are more than 4 standard
	// deviations away.
	const sample = 600
	natstest.Eventually(t, 30*time.Second, func() bool { return since(enabled) >= sample }, "%d calls after recovery", sample)

	mu.Lock()
	var deadCalls, inFlight, afterShare, after int
	for _, c := range calls {
		if c.router == "/azure/dud/" && c.status == http.StatusBadGateway {
			deadCalls++
			if c.start.Before(died) {
				inFlight++
			}
		}
		if !c.start.Before(enabled) {
			after++
			if c.router == "/azure/dud/" {
				afterShare++
			}
		}
	}
	total := len(calls)
	mu.Unlock()

	// The probe that brought it back is the last one before the first
	// replica logged it enabled; count the probes by those log lines, not
	// by windows of time.
	var back time.Time
	var cause string
	for _, l := range f.logs {
		if at, c, ok := enabledLine(l.String(), "/azure/dud/", revived); ok && (back.IsZero() || at.Before(back)) {
			back, cause = at, c
		}
	}
	is.True(!back.IsZero()) // some replica logged it enabled
	var deadProbes, liveProbes int
	for _, l := range f.logs {
		deadProbes += countLines(l.String(), "sending the probe call", died, revived)
		liveProbes += countLines(l.String(), "sending the probe call", revived, back)
	}
	t.Logf("dead for %v (5 × DISABLED_TIME %v), 8 callers: %d calls in all, %d to the dead router (%d already under way when it died), %d probes while dead; bound 8 in flight + %d probes = %d",
		revived.Sub(died).Round(time.Millisecond), disabled, total, deadCalls, inFlight, deadProbes, deadProbes, 8+deadProbes)
	t.Logf("recovered: enabled %v after the upstream came back (%q), by %d probe sent after it; share of the next %d calls %d = %.2f (full share 0.33)",
		back.Sub(revived).Round(time.Millisecond), cause, liveProbes, after, afterShare, float64(afterShare)/float64(after))
	is.True(deadCalls <= 8+deadProbes) // at most the calls in flight plus one per probe
	is.True(deadProbes >= 1)           // the policy did probe while it was dead
	is.Equal(cause, "probe succeeded") // a probe brought it back, not an expiry
	// Back within one probe: the one sent after the upstream came back, or
	// none when the probe that succeeded was sent a moment before.
	is.True(liveProbes <= 1) // one probe at a time
	share := float64(afterShare) / float64(after)
	is.True(share > 0.25 && share < 0.42) // back to its full share
}

// enabledLine finds the first "router enabled" log line for router at or
// after from, and returns its time and cause.
func enabledLine(out, router string, from time.Time) (time.Time, string, bool) {
	for _, line := range strings.Split(out, "\n") {
		var m struct {
			Time   time.Time `json:"time"`
			Msg    string    `json:"msg"`
			Router string    `json:"router"`
			Cause  string    `json:"cause"`
		}
		if json.Unmarshal([]byte(line), &m) == nil && m.Msg == "router enabled" && m.Router == router && !m.Time.Before(from) {
			return m.Time, m.Cause, true
		}
	}
	return time.Time{}, "", false
}

// TestFailureReportsAtEveryReplicaAtOnceMakeOneDisable makes the race that
// compare-and-set exists for certain, in every mode: the replicas reach
// the server through a proxy that holds back everything they tell each
// other (bucket writes, and any news of them) until every replica has
// decided on its own view and sent its own write. Then one write lands and
// the others, deciding again on the winner's record, adopt it.
func TestFailureReportsAtEveryReplicaAtOnceMakeOneDisable(t *testing.T) {
	const router = "/azure/dud/"
	for _, m := range serverModes() {
		for _, how := range []string{"through the queue group", "at each replica's broker"} {
			t.Run(m.name+"/"+how, func(t *testing.T) {
				is := is.New(t)
				srv := m.start(t)
				proxy := natstest.StartProxy(t, srv.url)
				f := newFleet(t, srv.url, proxy.ClientURL(), m.plain, 3, broker.Policy{DisabledTime: time.Minute})
				// Reads of the bucket (the JetStream API) and replies pass.
				proxy.Hold(func(subject string) bool {
					return !strings.HasPrefix(subject, "$JS.API.") && !strings.HasPrefix(subject, "_INBOX.")
				})
				errs := make(chan error, 60)
				var wg sync.WaitGroup
				switch how {
				case "through the queue group":
					// 60 reports at once: each replica gets some.
					for range 60 {
						wg.Go(func() {
							if err := f.tryReport(`{"gl_path":"/azure/dud/","egress_status_code":502}`); err != nil {
								errs <- err
							}
						})
					}
				default:
					start := make(chan struct{})
					for _, b := range f.replicas {
						wg.Go(func() { <-start; b.Report([]byte(router), 502, 0) })
					}
					close(start)
				}
				natstest.Eventually(t, 10*time.Second, func() bool {
					n, _ := proxy.Holding("$KV.gl_broker.")
					return n == len(f.replicas)
				}, "a bucket write from every replica")
				// Each replica decided on its own view, before it could hear
				// of anyone else's disable, and nothing has landed yet.
				for i, l := range f.logs {
					first, ok := logLine(l.String(), "router disabled")
					is.True(ok)                                           // the record is in the bucket
					is.Equal(first["by"], fmt.Sprintf("replica-%d", i+1)) // its own decision
				}
				is.Equal(f.lastSeq(t), uint64(0))
				proxy.Release()
				wg.Wait()
				close(errs)
				for err := range errs {
					t.Fatal(err)
				}
				f.every(t, 2*time.Second, phaseIs(router, broker.Disabled), "disabled")
				f.stop() // every write attempt done
				// The bucket keeps one revision per key, so count what was
				// ever written by the stream's sequence: it was empty before.
				is.Equal(f.lastSeq(t), uint64(1)) // one write landed
				var attempts, failed uint64
				for _, b := range f.replicas {
					s := b.Stats()
					attempts, failed = attempts+s.KVWrites, failed+s.KVErrors
				}
				is.Equal(attempts, uint64(len(f.replicas))) // every replica attempted its own: a race, decided by compare-and-set
				is.Equal(failed, uint64(0))                 // losing it is not an error
			})
		}
	}
}

// TestABackoffLevelOutOfRangeInTheBucketIsHeldToThePolicy: a record
// written by hand with a negative level made the next disable last next
// to nothing, so a failed probe wrote nothing and the dead router got a
// probe call per probe timeout for ever. Read, the level is held to 0 and
// the cap, with one line saying so, and a failed probe disables the
// router at the next level, in the bucket.
func TestABackoffLevelOutOfRangeInTheBucketIsHeldToThePolicy(t *testing.T) {
	is := is.New(t)
	const disabled = time.Second
	f := startFleet(t, 2, disabled, broker.Policy{}, false)
	now := time.Now()
	f.put(t, broker.Record{Router: "/azure/dud/", Status: 502, Reason: "by hand", At: now.Add(-time.Minute), Until: now, By: "mallory", Level: -1000000})
	f.every(t, 2*time.Second, phaseIs("/azure/dud/", broker.Probation), "on probation")
	natstest.Eventually(t, 3*time.Second, func() bool { return f.route(t) == "/azure/dud/" }, "the probe goes out")
	f.report(t, `{"gl_path":"/azure/dud/","egress_status_code":502}`) // the probe fails
	var r broker.Record
	natstest.Eventually(t, 3*time.Second, func() bool {
		r, _ = f.record(t, "/azure/dud/")
		return strings.HasPrefix(r.Reason, "probe failed")
	}, "the failed probe's disable in the bucket")
	is.Equal(r.Level, 1)                    // the next level after 0
	is.Equal(r.Until.Sub(r.At), 2*disabled) // and as long as that level lasts
	f.every(t, time.Second, phaseIs("/azure/dud/", broker.Disabled), "disabled on every replica")
	for _, l := range f.logs {
		line, ok := logLine(l.String(), "record's backoff level is out of range; using the nearest the failure policy allows")
		is.True(ok)                                // said on every replica
		is.Equal(line["level"], float64(-1000000)) // what the record said
		is.Equal(line["used"], float64(0))         // and what is used
	}

	// A memo (the delete marker's body) with a level past the cap is the
	// cap: it overflowed to a negative level, and the next disable lasted
	// nothing and was never written.
	memo, err := kv.Encode(broker.Record{Router: "/azure/gpt4/", Reason: broker.ReasonExpired, By: "mallory", Level: math.MaxInt, Ended: time.Now()})
	is.NoErr(err)
	js, err := jetstream.New(f.nc)
	is.NoErr(err)
	_, err = js.PublishMsg(context.Background(), &nats.Msg{Subject: "$KV.gl_broker./azure/gpt4/", Data: memo, Header: nats.Header{"KV-Operation": []string{"DEL"}}})
	is.NoErr(err)
	f.report(t, `{"gl_path":"/azure/gpt4/","egress_status_code":502}`)
	natstest.Eventually(t, 3*time.Second, func() bool {
		_, live := f.record(t, "/azure/gpt4/")
		return live
	}, "gpt4's disable in the bucket")
	r, _ = f.record(t, "/azure/gpt4/")
	is.Equal(r.Level, 3)                    // the cap's level (×8 with the defaults)
	is.Equal(r.Until.Sub(r.At), 8*disabled) // the longest disable
}
