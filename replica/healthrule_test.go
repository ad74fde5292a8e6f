package replica_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
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

// flaky makes calls to the pool of one router, /azure/dud/, as gecholog
// makes them (request context, the upstream call, response context, and
// the transaction log), one after another, the i-th failing with 502 when
// fails(i). It returns how many calls it made before a replica took the
// router out, or calls when none did, and then waits for every replica to
// have it out.
func flaky(t *testing.T, f *healthFleet, fails func(i int) bool, calls int) int {
	t.Helper()
	for i := range calls {
		f.fail.Store(fails(i))
		res, err := f.gw.Do(context.Background(), "/azure/")
		if err != nil {
			t.Fatal(err)
		}
		if res.Router != "/azure/dud/" {
			t.Fatalf("call %d went to %q", i, res.Router)
		}
		// The replica that decides has it out before it answers.
		for _, b := range f.replicas {
			if b.Phase("/azure/dud/") == broker.Disabled {
				f.every(t, time.Second, phaseIs("/azure/dud/", broker.Disabled), "out on every replica")
				return i + 1
			}
		}
	}
	return calls
}

// crossing is the call at which a schedule's failure rate first reaches
// the rule's, counting from the first call.
func crossing(p broker.Policy, fails func(i int) bool) int {
	failed := 0
	for i := range 1 << 20 {
		if fails(i) {
			failed++
		}
		if i+1 >= p.RateMinCalls && float64(failed)*100 >= p.Rate*float64(i+1) {
			return i + 1
		}
	}
	return -1
}

type healthFleet struct {
	*replicaSet
	nc   *nats.Conn
	gw   standin.Gateway
	fail atomic.Bool // the next upstream call fails
}

// healthFleet starts 3 replicas with policy (DISABLED_TIME a minute
// unless set) and a pool /azure/ of one router, /azure/dud/, whose
// upstream answers 502 while fail is set and 200 otherwise.
func startHealthFleet(t *testing.T, policy broker.Policy) *healthFleet {
	t.Helper()
	s := natstest.Start(t)
	if policy.DisabledTime == 0 {
		policy.DisabledTime = time.Minute
	}
	f := &healthFleet{nc: natstest.Connect(t, s)}
	var ups standin.Upstreams
	t.Cleanup(ups.Close)
	err := ups.Add("/azure/dud/", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if f.fail.Load() {
			w.WriteHeader(http.StatusBadGateway)
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	f.replicaSet = runReplicas(t, replica.Config{NATS: natsconn.Settings{Servers: s.ClientURL()}, Policy: policy,
		Pools: []broker.Pool{{Ingress: "/azure/", Routers: []broker.Router{{Path: "/azure/dud/", Weight: 1}}}}}, 3)
	f.gw = standin.Gateway{NC: f.nc, Subject: replica.DefaultSubject, Upstreams: ups.URLs,
		Logger: replica.DefaultLoggerSubject, Client: standin.NewClient(5 * time.Second)}
	return f
}

func bucketWrites(t *testing.T, nc *nats.Conn) uint64 {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(context.Background(), "KV_"+replica.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.LastSeq
}

func rateFleet(t *testing.T, policy broker.Policy) (*replicaSet, *nats.Conn) {
	t.Helper()
	s := natstest.Start(t)
	if policy.DisabledTime == 0 {
		policy.DisabledTime = time.Minute
	}
	rs := runReplicas(t, replica.Config{NATS: natsconn.Settings{Servers: s.ClientURL()}, Policy: policy}, 3)
	return rs, natstest.Connect(t, s)
}

// rule is the issue's: 20% of at least 20 calls in 30 s, beside a
// threshold of 5 consecutive failures.
var rule = broker.Policy{Threshold: 5, Rate: 20, RateMinCalls: 20, RateWindow: 30 * time.Second}

func TestARouterFailingThirtyPercentIsTakenOutByTheFailureRateWithOneWrite(t *testing.T) {
	is := is.New(t)
	f := startHealthFleet(t, rule)
	before := bucketWrites(t, f.nc)
	thirty := func(i int) bool { return i%10 < 3 } // never 5 in a row
	n := flaky(t, f, thirty, 200)
	// Out within min calls of the crossing (calls here are one at a time:
	// none is in flight).
	cross := crossing(rule, thirty)
	is.True(n > cross && n <= cross+rule.RateMinCalls) // out within min calls after the rate crossed
	rec := landed(t, f.nc, "/azure/dud/")
	is.True(strings.HasPrefix(rec.Reason, "failure rate ")) // the rule that fired, with its figures
	saysLast(t, "the reason", rec.Reason, " calls in 30s")
	f.stop()
	is.Equal(bucketWrites(t, f.nc)-before, uint64(1)) // exactly one write: the disable
	t.Logf("rate crossed at call %d; out at call %d: %q", cross, n, rec.Reason)
}

func TestARouterFailingFivePercentIsNeverTakenOut(t *testing.T) {
	is := is.New(t)
	f := startHealthFleet(t, rule)
	before := bucketWrites(t, f.nc)
	const calls = 2_000 // e2e makes 10,000, through replica processes
	n := flaky(t, f, func(i int) bool { return i%20 == 0 }, calls)
	is.Equal(n, calls) // never out
	f.stop()
	is.Equal(bucketWrites(t, f.nc), before) // and nothing written
}

func TestWithTheRuleOffTheThresholdAloneDecides(t *testing.T) {
	is := is.New(t)
	off := rule
	off.Rate = 0
	f := startHealthFleet(t, off)
	// 30% and 5% failing, never 5 in a row: never out.
	is.Equal(flaky(t, f, func(i int) bool { return i%10 < 3 }, 200), 200)
	is.Equal(flaky(t, f, func(i int) bool { return i%20 == 0 }, 200), 200)
	// A dead router: out at the fifth failure in a row, as before. Each
	// failure here reaches every replica's count before the next call, so
	// that the count, not how fast the replicas tell each other, decides.
	f.fail.Store(true)
	for i := 1; i <= 5; i++ {
		res, err := f.gw.Do(context.Background(), "/azure/")
		is.NoErr(err)
		is.Equal(res.Router, "/azure/dud/")
		if i < 5 {
			f.every(t, 5*time.Second, func(b *broker.Broker) bool { return b.Failures("/azure/dud/") == i }, fmt.Sprintf("%d failures counted", i))
			for _, b := range f.replicas {
				is.Equal(b.Phase("/azure/dud/"), broker.Enabled) // not yet
			}
		}
	}
	f.every(t, 5*time.Second, phaseIs("/azure/dud/", broker.Disabled), "out at the fifth failure")
	is.Equal(landed(t, f.nc, "/azure/dud/").Reason, "egress_status_code 502")
}

// Two failures reported to two replicas at the same moment, each before
// it has heard of the other's, reach a threshold of 2 only together: they
// tell each other, and one of them takes the router out, with one write.
func TestFailuresReportedToTwoReplicasAtOnceReachTheThresholdTogether(t *testing.T) {
	is := is.New(t)
	f := startHealthFleet(t, broker.Policy{Threshold: 2})
	before := bucketWrites(t, f.nc)
	start := make(chan struct{})
	done := make(chan struct{})
	for _, b := range f.replicas[:2] {
		go func() {
			defer func() { done <- struct{}{} }()
			<-start
			b.Report([]byte("/azure/dud/"), http.StatusBadGateway, 0)
		}()
	}
	close(start)
	<-done
	<-done
	f.every(t, 5*time.Second, phaseIs("/azure/dud/", broker.Disabled), "out")
	is.Equal(landed(t, f.nc, "/azure/dud/").Reason, "egress_status_code 502")
	f.stop()
	is.Equal(bucketWrites(t, f.nc)-before, uint64(1)) // one disable, written once
}

func TestFailureCodesYouChooseDecideWhatCountsAgainstARouter(t *testing.T) {
	is := is.New(t)
	codes, err := broker.ParseFailureCodes("5xx")
	is.NoErr(err)
	rs, nc := rateFleet(t, broker.Policy{FailureCodes: codes})
	tell(t, nc, "/azure/gpt4/", 429) // a 429 is no failure now
	tell(t, nc, "/azure/gpt4/", 404)
	tell(t, nc, "/azure/dud/", 504)
	rs.every(t, 5*time.Second, phaseIs("/azure/dud/", broker.Disabled), "a 5xx disables")
	for _, b := range rs.replicas {
		is.Equal(b.Phase("/azure/gpt4/"), broker.Enabled)
	}
}

func TestAFractionOfASecondIsTheDisabledTimeOnEveryReplicaInBothModes(t *testing.T) {
	for _, tc := range []struct {
		name  string
		plain bool
	}{{"ttl", false}, {"expiry", true}} {
		t.Run(tc.name, func(t *testing.T) {
			is := is.New(t)
			s := natstest.Start(t)
			nc := natstest.Connect(t, s)
			if tc.plain {
				js, err := jetstream.New(nc)
				is.NoErr(err)
				_, err = js.CreateKeyValue(context.Background(), jetstream.KeyValueConfig{Bucket: replica.DefaultBucket})
				is.NoErr(err)
			}
			const disabled = 300 * time.Millisecond // DISABLED_TIME=0.005
			rs := runReplicas(t, replica.Config{NATS: natsconn.Settings{Servers: s.ClientURL()},
				Policy: broker.Policy{DisabledTime: disabled}}, 3)
			sent := time.Now()
			tell(t, nc, "/azure/dud/", 502)
			rs.every(t, time.Second, phaseIs("/azure/dud/", broker.Disabled), "disabled")
			rec := landed(t, nc, "/azure/dud/")
			is.Equal(rec.Until.Sub(rec.At), disabled) // exact in the record
			// Each replica puts it on probation at its until, by its own
			// clock: watch every replica, every millisecond.
			ended := make([]time.Duration, len(rs.replicas))
			natstest.Eventually(t, 3*time.Second, func() bool {
				all := true
				for i, b := range rs.replicas {
					if ended[i] == 0 && b.Phase("/azure/dud/") != broker.Disabled {
						ended[i] = time.Since(rec.At)
					}
					all = all && ended[i] != 0
				}
				return all
			}, "the disable ends on every replica")
			for i, d := range ended {
				if d < disabled-50*time.Millisecond || d > disabled+50*time.Millisecond {
					t.Errorf("replica-%d ended the disable after %v, not 0.3 s ± 50 ms", i+1, d)
				}
			}
			t.Logf("%s: reported %v before the record's at; ended on the replicas after %v", tc.name, rec.At.Sub(sent), ended)
		})
	}
}

func TestWithDisabledTimeZeroAFailureNeverTakesARouterOut(t *testing.T) {
	is := is.New(t)
	rs, nc := rateFleet(t, broker.Policy{NeverDisable: true, DisabledTime: time.Minute})
	for range 5 {
		tell(t, nc, "/azure/dud/", 502)
	}
	if _, err := nc.Request(replica.DefaultSubject, []byte(`{"gl_path":"/azure/dud/","egress_status_code":429,"inbound_headers":{"Retry-After":["30"]}}`), 2*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, b := range rs.replicas {
		is.Equal(b.Phase("/azure/dud/"), broker.Enabled)
	}
	_, ok := bucketRecord(t, nc, "/azure/dud/")
	is.Equal(ok, false) // nothing written to the bucket
	for i, l := range rs.logs {
		if n := strings.Count(l.String(), "DISABLED_TIME is 0: a failure never takes a router out"); n != 1 {
			t.Errorf("replica-%d said it %d times, not once", i+1, n)
		}
	}
}

// landed waits for router's record to land in the bucket (the replicas
// announce a disable before they write it) and returns it.
func landed(t *testing.T, nc *nats.Conn, router string) broker.Record {
	t.Helper()
	var rec broker.Record
	natstest.Eventually(t, 2*time.Second, func() bool {
		var ok bool
		rec, ok = bucketRecord(t, nc, router)
		return ok
	}, router+"'s record lands")
	return rec
}

// bucketRecord reads router's live record, ok false when it has none.
func bucketRecord(t *testing.T, nc *nats.Conn, router string) (broker.Record, bool) {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	b, err := js.KeyValue(context.Background(), replica.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	e, err := b.Get(context.Background(), router)
	switch {
	case err == jetstream.ErrKeyNotFound || err == jetstream.ErrKeyDeleted:
		return broker.Record{}, false
	case err != nil:
		t.Fatalf("get %s: %v", router, err)
	}
	r, err := kv.Decode(router, e.Value())
	if err != nil {
		t.Fatal(fmt.Errorf("record %s: %w", router, err))
	}
	return r, true
}
