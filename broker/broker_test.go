package broker_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/testutil/natstest"
)

// fakeStore is an in-memory Store with revisions, compare-and-set, delete
// markers with memos, and a count of writes.
type fakeStore struct {
	mu      sync.Mutex
	rev     uint64
	last    map[string]fakeMsg
	writes  int
	failing int // the next n calls fail with a network error
}

type fakeMsg struct {
	rec     broker.Record
	rev     uint64
	deleted bool
}

var errNetwork = errors.New("nats: timeout")

func newFakeStore() *fakeStore { return &fakeStore{last: map[string]fakeMsg{}} }

func (f *fakeStore) fail() error {
	if f.failing > 0 {
		f.failing--
		return errNetwork
	}
	return nil
}

func (f *fakeStore) Latest(_ context.Context, router string) (broker.Entry, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail(); err != nil {
		return broker.Entry{}, false, err
	}
	m := f.last[router]
	return broker.Entry{Record: m.rec, Revision: m.rev}, m.rev != 0 && !m.deleted, nil
}

func (f *fakeStore) Update(_ context.Context, r broker.Record, rev uint64) (uint64, error) {
	return f.write(r, rev, false)
}

func (f *fakeStore) Release(_ context.Context, memo broker.Record, rev uint64) (uint64, error) {
	return f.write(memo, rev, true)
}

// Announce tells nobody: the tests that listen wrap the store (see
// announcingStore).
func (f *fakeStore) Announce(broker.Record) {}

func (f *fakeStore) write(r broker.Record, rev uint64, deleted bool) (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail(); err != nil {
		return 0, err
	}
	if f.last[r.Router].rev != rev {
		return 0, broker.ErrConflict
	}
	return f.put(r, deleted), nil
}

func (f *fakeStore) put(r broker.Record, deleted bool) uint64 {
	f.rev++
	f.writes++
	f.last[r.Router] = fakeMsg{rec: r, rev: f.rev, deleted: deleted}
	return f.rev
}

// entry returns router's live record.
func (f *fakeStore) entry(router string) (broker.Entry, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m, ok := f.last[router]
	return broker.Entry{Record: m.rec, Revision: m.rev}, ok && !m.deleted
}

func (f *fakeStore) writeCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.writes
}

// logs is a concurrency-safe log sink.
type logs struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logs) Write(p []byte) (int, error) { l.mu.Lock(); defer l.mu.Unlock(); return l.buf.Write(p) }

func (l *logs) count(msg string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.buf.String(), `"msg":"`+msg+`"`)
}

func newBroker(t *testing.T, cfg broker.Config) (*broker.Broker, *logs) {
	t.Helper()
	l := &logs{}
	if cfg.Pools == nil {
		cfg.Pools = broker.DefaultPools()
	}
	if cfg.Policy.DisabledTime == 0 {
		cfg.Policy.DisabledTime = time.Hour
	}
	if cfg.ID == "" {
		cfg.ID = "replica-1"
	}
	cfg.Logger = slog.New(slog.NewJSONHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
	b, err := broker.New(cfg)
	if err != nil {
		t.Fatalf("new broker: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		b.Close(ctx)
	})
	return b, l
}

// pick asks b for the router a request context for ingress goes to: its
// path, or "" when the call stays on the ingress. It fails nothing itself,
// so goroutines other than the test's may call it.
func pick(b *broker.Broker, ingress string) string {
	id := b.Choose([]byte(ingress))
	if id < 0 {
		return ""
	}
	return b.Members()[id]
}

// report tells b that a call to router ended with status, without a
// Retry-After.
func report(b *broker.Broker, router string, status int) {
	b.Report([]byte(router), status, 0)
}

func TestIngressRequestGetsARouterOfItsPool(t *testing.T) {
	is := is.New(t)
	b, _ := newBroker(t, broker.Config{})
	members := map[string]bool{"/azure/gpt35turbo/": true, "/azure/gpt4/": true, "/azure/dud/": true}
	for range 100 {
		is.True(members[pick(b, "/azure/")]) // one of the pool's routers
	}
}

// The message-level cases (malformed messages, statuses no HTTP answer
// has, a missing gl_path) are gecholog's: see the gecholog package's
// handler tests. They never reach the core.
func TestAnythingButAnIngressRequestOrFailureIsLeftAloneAndChangesNothing(t *testing.T) {
	for name, c := range map[string]struct {
		path   string
		status int // 0: a request context for path; else a response context of path
	}{
		"member router called directly": {path: "/azure/gpt4/"},
		"unknown path":                  {path: "/openai/"},
		"empty path":                    {path: ""},
		"failure of the ingress itself": {path: "/azure/", status: 502},
		"failure of an unknown router":  {path: "/openai/x/", status: 502},
		"success":                       {path: "/azure/dud/", status: 200},
	} {
		t.Run(name, func(t *testing.T) {
			is := is.New(t)
			store := newFakeStore()
			b, _ := newBroker(t, broker.Config{Store: store})
			if c.status == 0 {
				is.Equal(b.Choose([]byte(c.path)), -1) // no router: the call stays where it is
			} else {
				report(b, c.path, c.status)
			}
			is.Equal(len(b.Routers("/azure/")), 3) // no router disabled
			is.True(pick(b, "/azure/") != "")      // still serving
			b.Close(context.Background())          // waits for any background write
			is.Equal(store.writeCount(), 0)        // nothing written
		})
	}
}

func TestFailureStatusesDisableAndClientErrorsDoNot(t *testing.T) {
	for _, tc := range []struct {
		status  int
		disable bool
	}{
		{200, false}, {201, false}, {204, false}, {301, false}, {304, false},
		{400, false}, {402, false}, {405, false}, {409, false}, {413, false}, {422, false},
		{401, true}, {403, true}, {404, true}, {408, true}, {429, true},
		{500, true}, {502, true}, {503, true}, {504, true}, {599, true},
	} {
		t.Run(fmt.Sprint(tc.status), func(t *testing.T) {
			is := is.New(t)
			b, _ := newBroker(t, broker.Config{})
			report(b, "/azure/dud/", tc.status)
			disabled := len(b.Routers("/azure/")) == 2
			is.Equal(disabled, tc.disable)
			is.Equal(broker.Failure(tc.status), tc.disable)
		})
	}
}

func TestFailedRouterIsNeverChosenAndWrittenOnce(t *testing.T) {
	is := is.New(t)
	store := newFakeStore()
	b, l := newBroker(t, broker.Config{Store: store})
	for range 50 {
		report(b, "/azure/dud/", 502)
	}
	for range 300 {
		is.True(pick(b, "/azure/") != "/azure/dud/") // the disable takes effect at once
	}
	natstest.Eventually(t, 5*time.Second, func() bool { _, ok := store.entry("/azure/dud/"); return ok }, "disable written")
	b.Close(context.Background()) // waits for any other write on its way
	e, _ := store.entry("/azure/dud/")
	is.Equal(e.Record.Status, 502)
	is.Equal(e.Record.By, "replica-1")
	is.Equal(e.Record.Reason, "egress_status_code 502")
	is.True(e.Record.Until.Sub(e.Record.At) == time.Hour) // DisabledTime
	is.Equal(e.Record.Level, 0)
	is.Equal(store.writeCount(), 1)         // one write for fifty reports
	is.Equal(l.count("router disabled"), 1) // one log line per transition
}

func TestDisabledRouterGetsOneProbeAfterDisabledTimeAndReturnsWhenItSucceeds(t *testing.T) {
	is := is.New(t)
	const disabled = 100 * time.Millisecond
	b, l := newBroker(t, broker.Config{Policy: broker.Policy{DisabledTime: disabled}})
	before := time.Now() // the disable ends at disabled after this, or later
	report(b, "/azure/dud/", 503)
	is.Equal(b.Phase("/azure/dud/"), broker.Disabled)
	var by time.Time // the phase read had been made by then
	natstest.Eventually(t, 5*time.Second, func() bool {
		ph := b.Phase("/azure/dud/")
		by = time.Now()
		return ph == broker.Probation
	}, "dud on probation")
	is.True(!by.Before(before.Add(disabled))) // not before its time
	// The phase follows the clock; the pool's choices follow the timer,
	// which fires at the same moment: wait for the probe, then for no
	// second one.
	probes := 0
	natstest.Eventually(t, 5*time.Second, func() bool {
		if pick(b, "/azure/") == "/azure/dud/" {
			probes++
		}
		return probes > 0
	}, "the probe goes out")
	for range 300 {
		if pick(b, "/azure/") == "/azure/dud/" {
			probes++
		}
	}
	is.Equal(probes, 1) // exactly one probe call
	report(b, "/azure/dud/", 200)
	is.Equal(b.Phase("/azure/dud/"), broker.Enabled)
	is.Equal(len(b.Routers("/azure/")), 3)
	is.Equal(l.count("router enabled"), 1)
}

func TestPoolWithEveryRouterDisabledLeavesCallsOnTheIngressWhenSoConfigured(t *testing.T) {
	is := is.New(t)
	// An hour: every call below falls within the disables, however slowly
	// the machine runs it.
	b, l := newBroker(t, broker.Config{Policy: broker.Policy{DisabledTime: time.Hour, AllDisabled: broker.Ingress}})
	for _, r := range []string{"/azure/gpt35turbo/", "/azure/gpt4/", "/azure/dud/"} {
		report(b, r, 500)
	}
	for range 10 {
		is.Equal(b.Choose([]byte("/azure/")), -1) // no router: gecholog keeps the ingress router
	}
	is.Equal(b.Stats().Calls[broker.Stranded], uint64(10))
	is.Equal(b.Stats().Calls[broker.Panicked], uint64(0)) // not panic mode
	is.Equal(l.count("every router of the pool is disabled; calls stay on the ingress router's own outbound"), 1)
}

func TestPoolWithEveryRouterDisabledOnTheIngressProbesOnceADisableEnds(t *testing.T) {
	is := is.New(t)
	const disabled = 100 * time.Millisecond
	b, _ := newBroker(t, broker.Config{Policy: broker.Policy{DisabledTime: disabled, AllDisabled: broker.Ingress}})
	before := time.Now() // every disable ends at disabled after this, or later
	for _, r := range []string{"/azure/gpt35turbo/", "/azure/gpt4/", "/azure/dud/"} {
		report(b, r, 500)
	}
	var probe string
	var by time.Time // the call that went out had been made by then
	natstest.Eventually(t, 5*time.Second, func() bool {
		probe, by = pick(b, "/azure/"), time.Now()
		return probe != ""
	}, "a probe goes out")
	is.True(!by.Before(before.Add(disabled)))  // not before a disable ended
	is.Equal(b.Phase(probe), broker.Probation) // to a router on probation
	is.Equal(b.Stats().Calls[broker.Chosen], uint64(1))
}

func TestChoicesAreUniformByDefaultAndFollowWeights(t *testing.T) {
	const n = 60000
	for _, tc := range []struct {
		name    string
		weights []int
	}{
		{"equal", []int{1, 1, 1}},
		{"weighted", []int{1, 2, 3}},
		{"one heavy", []int{10, 1, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			is := is.New(t)
			pool := broker.Pool{Ingress: "/in/"}
			total := 0
			for i, w := range tc.weights {
				pool.Routers = append(pool.Routers, broker.Router{Path: fmt.Sprintf("/in/r%d/", i), Weight: w})
				total += w
			}
			b, _ := newBroker(t, broker.Config{Pools: []broker.Pool{pool}})
			counts := map[string]int{}
			for range n {
				counts[pick(b, "/in/")]++
			}
			for i, w := range tc.weights {
				got := float64(counts[fmt.Sprintf("/in/r%d/", i)]) / n
				want := float64(w) / float64(total)
				// The standard error is at most 0.002 at n=60000: 0.01 is five of them.
				is.True(got > want-0.01 && got < want+0.01) // share follows the weight
			}
		})
	}
}

func TestDisablesFromOtherReplicasApplyAndLift(t *testing.T) {
	is := is.New(t)
	b, _ := newBroker(t, broker.Config{})
	rec := broker.Record{Router: "/azure/gpt4/", Status: 502, At: time.Now(), Until: time.Now().Add(time.Hour), By: "replica-2"}
	b.Observe(broker.Event{Router: rec.Router, Entry: &broker.Entry{Record: rec, Revision: 7}, Revision: 7})
	is.Equal(b.Routers("/azure/"), []string{"/azure/gpt35turbo/", "/azure/dud/"})
	b.Observe(broker.Event{Router: rec.Router, Revision: 8}) // deleted by an operator
	is.Equal(len(b.Routers("/azure/")), 3)
}

func TestEndedRecordPutsAnAutomaticDisableOnProbationAndEndsAManualOne(t *testing.T) {
	is := is.New(t)
	b, _ := newBroker(t, broker.Config{})
	ended := broker.Record{Router: "/azure/gpt4/", At: time.Now().Add(-time.Hour), Until: time.Now().Add(-time.Minute)}
	b.Observe(broker.Event{Router: ended.Router, Entry: &broker.Entry{Record: ended, Revision: 3}, Revision: 3})
	is.Equal(b.Phase("/azure/gpt4/"), broker.Probation) // waits for a probe
	is.Equal(len(b.Routers("/azure/")), 2)

	ended.Manual = true
	b.Observe(broker.Event{Router: ended.Router, Entry: &broker.Entry{Record: ended, Revision: 4}, Revision: 4})
	is.Equal(b.Phase("/azure/gpt4/"), broker.Enabled) // manual disables are never probed
	is.Equal(len(b.Routers("/azure/")), 3)
}

func TestRecordsForRoutersNoPoolKnowsAreIgnored(t *testing.T) {
	is := is.New(t)
	b, _ := newBroker(t, broker.Config{})
	rec := broker.Record{Router: "/other/x/", Until: time.Now().Add(time.Hour)}
	b.Observe(broker.Event{Router: rec.Router, Entry: &broker.Entry{Record: rec, Revision: 3}, Revision: 3})
	is.Equal(len(b.Routers("/azure/")), 3)
}

func TestOlderDeletionDoesNotUndoOwnDisableOnItsWay(t *testing.T) {
	is := is.New(t)
	store := newFakeStore()
	store.failing = 1000 // the write never lands
	b, _ := newBroker(t, broker.Config{Store: store})
	report(b, "/azure/dud/", 502)
	b.Observe(broker.Event{Router: "/azure/dud/", Revision: 4}) // an expiry from an earlier disable arrives late
	is.Equal(len(b.Routers("/azure/")), 2)
}

func TestLosingTheRaceAdoptsTheOtherReplicasDisable(t *testing.T) {
	is := is.New(t)
	store := newFakeStore()
	winner := broker.Record{Router: "/azure/dud/", Status: 504, At: time.Now(), Until: time.Now().Add(30 * time.Minute), By: "replica-2"}
	store.put(winner, false)
	b, _ := newBroker(t, broker.Config{Store: store})
	report(b, "/azure/dud/", 502)
	is.Equal(b.Phase("/azure/dud/"), broker.Disabled)
	b.Close(context.Background()) // waits for the background write
	e, _ := store.entry("/azure/dud/")
	is.Equal(e.Record.By, "replica-2") // the winner's record stands
	is.Equal(store.writeCount(), 1)    // only the winner's write
}

func TestFailureDuringProbationDisablesAtTheNextLevel(t *testing.T) {
	is := is.New(t)
	store := newFakeStore()
	store.put(broker.Record{Router: "/azure/dud/", Until: time.Now().Add(-time.Second), By: "replica-2", Level: 1}, false)
	b, _ := newBroker(t, broker.Config{Store: store})
	report(b, "/azure/dud/", 502)
	b.Close(context.Background())
	e, _ := store.entry("/azure/dud/")
	is.Equal(e.Record.By, "replica-1")
	is.Equal(e.Record.Level, 2)
	is.Equal(e.Record.Until.Sub(e.Record.At), 4*time.Hour)      // DisabledTime × 2²
	is.True(strings.HasPrefix(e.Record.Reason, "probe failed")) // the failed probe is the reason
}

func TestWriteIsRetriedWhenTheStoreFails(t *testing.T) {
	store := newFakeStore()
	store.failing = 3
	b, l := newBroker(t, broker.Config{Store: store})
	report(b, "/azure/dud/", 502)
	natstest.Eventually(t, 5*time.Second, func() bool { _, ok := store.entry("/azure/dud/"); return ok }, "disable written after retries")
	is.New(t).Equal(l.count("could not write router health to the bucket; other replicas do not know yet; retrying"), 1)
}

// A replica stopped while its bucket does not answer (a partition) gives
// up the writes it kept once Close's time is up: each is logged, with the
// router, since no other replica will hear of it.
func TestAWriteGivenUpOnStoppingIsLoggedWithItsRouter(t *testing.T) {
	is := is.New(t)
	store := newFakeStore()
	store.failing = 1 << 30 // the bucket never answers
	b, l := newBroker(t, broker.Config{Store: store})
	report(b, "/azure/dud/", 502)
	natstest.Eventually(t, 5*time.Second, func() bool {
		return l.count("could not write router health to the bucket; other replicas do not know yet; retrying") == 1
	}, "the first failed write logged")
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	b.Close(ctx)
	is.Equal(l.count("stopping: gave up writing router health to the bucket; the other replicas do not know of it"), 1)
	l.mu.Lock()
	defer l.mu.Unlock()
	is.True(strings.Contains(l.buf.String(), `"msg":"stopping: gave up writing router health to the bucket; the other replicas do not know of it","router":"/azure/dud/"`))
}

func TestStatsCountCallsChoicesTransitionsAndWrites(t *testing.T) {
	is := is.New(t)
	store := newFakeStore()
	b, _ := newBroker(t, broker.Config{Store: store})
	for range 10 {
		pick(b, "/azure/")
	}
	pick(b, "/other/")
	report(b, "/azure/gpt4/", 200)
	report(b, "/azure/dud/", 502)
	report(b, "/azure/dud/", 502)
	report(b, "/azure/dud/", 429)
	report(b, "/nowhere/", 503) // a path no pool has
	report(b, "/elsewhere/", 503)
	natstest.Eventually(t, 5*time.Second, func() bool { return b.Stats().KVWrites == 1 }, "one KV write")
	b.Close(context.Background()) // waits for any other write on its way

	s := b.Stats()
	is.Equal(s.KVWrites, uint64(1)) // one write for three failure reports
	is.Equal(s.Calls[broker.Chosen], uint64(10))
	is.Equal(s.Calls[broker.NotIngress], uint64(1))
	is.Equal(s.Calls[broker.Succeeded], uint64(1))
	is.Equal(s.Calls[broker.Failed], uint64(5))
	slices.SortFunc(s.FailureReports, func(a, b broker.Count) int {
		return strings.Compare(a.Router+" "+a.Status, b.Router+" "+b.Status)
	})
	is.Equal(s.FailureReports, []broker.Count{ // by router and status, with bounded labels
		{Router: "/azure/dud/", Status: "429", N: 1},
		{Router: "/azure/dud/", Status: "502", N: 2},
		{Router: broker.OtherRouter, Status: "503", N: 2},
	})
	var chosen uint64
	for _, c := range s.Choices {
		is.Equal(c.Ingress, "/azure/")
		chosen += c.N
	}
	is.Equal(chosen, uint64(10)) // every choice counted once, by router
	is.Equal(s.Disabled, 1)
	is.Equal(s.KVErrors, uint64(0))
	is.Equal(s.Transitions, []broker.Count{{Router: "/azure/dud/", To: "disabled", Reason: "status_502", N: 1}})
	is.Equal(s.Calls[broker.Panicked], uint64(0))
	is.Equal(broker.Chosen.Context(), "request")
	is.Equal(broker.Failed.String(), "failure")
}

func TestPanicModeSendsCallsToTheRouterBackSoonestButNeverAManualOne(t *testing.T) {
	is := is.New(t)
	b, l := newBroker(t, broker.Config{})
	now := time.Now()
	for i, r := range []broker.Record{
		{Router: "/azure/gpt35turbo/", Until: now.Add(3 * time.Minute)},
		{Router: "/azure/gpt4/", Until: now.Add(time.Minute), Manual: true}, // back soonest, but by hand
		{Router: "/azure/dud/", Until: now.Add(2 * time.Minute)},
	} {
		b.Observe(broker.Event{Router: r.Router, Entry: &broker.Entry{Record: r, Revision: uint64(i + 1)}, Revision: uint64(i + 1)})
	}
	for range 50 {
		is.Equal(pick(b, "/azure/"), "/azure/dud/") // the automatic disable that ends soonest
	}
	is.Equal(b.Stats().Calls[broker.Panicked], uint64(50))
	is.Equal(l.count("every router of the pool is disabled; sending calls to the one whose disable ends soonest (panic mode)"), 1)
}

func TestAllDisabledAnyChoosesAmongEveryRouterButManualOnes(t *testing.T) {
	is := is.New(t)
	b, _ := newBroker(t, broker.Config{Policy: broker.Policy{DisabledTime: time.Hour, AllDisabled: broker.Any}})
	b.Observe(broker.Event{Router: "/azure/gpt4/", Entry: &broker.Entry{Record: broker.Record{Router: "/azure/gpt4/", Manual: true}, Revision: 1}, Revision: 1})
	report(b, "/azure/gpt35turbo/", 500)
	report(b, "/azure/dud/", 500)
	seen := map[string]int{}
	for range 300 {
		seen[pick(b, "/azure/")]++
	}
	is.Equal(len(seen), 2)            // both automatic disables get calls
	is.Equal(seen["/azure/gpt4/"], 0) // the manual one never
}

func TestOnlyOneProbeGoesOutUnderConcurrentCalls(t *testing.T) {
	is := is.New(t)
	b, _ := newBroker(t, broker.Config{})
	ended := broker.Record{Router: "/azure/dud/", Until: time.Now().Add(-time.Second), Probe: &broker.Probe{By: "replica-1", At: time.Now(), Until: time.Now().Add(time.Minute)}}
	b.Observe(broker.Event{Router: ended.Router, Entry: &broker.Entry{Record: ended, Revision: 5}, Revision: 5})
	var mu sync.Mutex
	probes := 0
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				if pick(b, "/azure/") == "/azure/dud/" {
					mu.Lock()
					probes++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	is.Equal(probes, 1) // one probe for 1600 concurrent calls
}

func TestPoisonedRecordsNeverStrandARouter(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		name string
		rec  broker.Record
	}{
		{"until years away", broker.Record{Router: "/azure/dud/", At: now, Until: now.AddDate(20, 0, 0)}},
		{"automatic without until", broker.Record{Router: "/azure/dud/", At: now}},
		{"probe claim years away", broker.Record{Router: "/azure/dud/", At: now, Until: now.Add(-time.Second),
			Probe: &broker.Probe{By: "ghost", At: now, Until: now.AddDate(5, 0, 0)}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			is := is.New(t)
			b, l := newBroker(t, broker.Config{Policy: broker.Policy{DisabledTime: 100 * time.Millisecond, ProbeTimeout: time.Second}})
			e := broker.Entry{Record: tc.rec, Revision: 9, Created: now}
			b.Observe(broker.Event{Router: tc.rec.Router, Entry: &e, Revision: 9})
			b.Observe(broker.Event{Router: tc.rec.Router, Entry: &e, Revision: 9}) // the same record again: no second warning
			is.Equal(l.count("record reaches further than the failure policy allows; using the longest disable instead"), 1)
			// The longest disable is 800ms (8 × 100ms), the probe timeout 1s:
			// clamped to those, plus a second's slack for the writer's clock,
			// the router gets its probe within two seconds of the record, not
			// years; the deadline leaves room for a slow machine.
			natstest.Eventually(t, 5*time.Second, func() bool { return pick(b, "/azure/") == "/azure/dud/" }, "the router gets a probe")
		})
	}
}

func TestRecordForARouterNoPoolHasIsIgnoredWithOneWarning(t *testing.T) {
	is := is.New(t)
	b, l := newBroker(t, broker.Config{})
	for rev := range uint64(3) {
		e := broker.Entry{Record: broker.Record{Router: "/nowhere/", Until: time.Now().Add(time.Hour)}, Revision: rev + 1}
		b.Observe(broker.Event{Router: "/nowhere/", Entry: &e, Revision: rev + 1})
	}
	is.Equal(l.count("ignoring a record for a router no pool has; remove it with `broker enable KEY` if it is a mistake"), 1)
	is.Equal(len(b.Routers("/azure/")), 3)
}

// TestAClosedBrokerChangesNothingAndStartsNoWrite: once Close has
// returned, reports, changes from the store and probe claims neither change
// the view nor start a write, and the timer of a disable never fires.
func TestAClosedBrokerChangesNothingAndStartsNoWrite(t *testing.T) {
	is := is.New(t)
	store := newFakeStore()
	b, _ := newBroker(t, broker.Config{Store: store, Policy: broker.Policy{DisabledTime: 60 * time.Millisecond}})
	report(b, "/azure/dud/", 502) // armed: on probation in 60 ms
	b.Close(context.Background())
	writes := store.writeCount()
	is.Equal(writes, 1) // the disable, finished by Close

	report(b, "/azure/gpt4/", 502)
	rec := broker.Record{Router: "/azure/gpt35turbo/", Until: time.Now().Add(time.Hour)}
	b.Observe(broker.Event{Router: rec.Router, Entry: &broker.Entry{Record: rec, Revision: 99}, Revision: 99})
	is.Equal(b.Phase("/azure/gpt4/"), broker.Enabled)       // no report applied
	is.Equal(b.Phase("/azure/gpt35turbo/"), broker.Enabled) // no change observed
	is.Equal(b.Routers("/azure/"), []string{"/azure/gpt35turbo/", "/azure/gpt4/"})
	for range 10 {
		is.True(pick(b, "/azure/") != "") // it still answers from its last view
	}
	is.Equal(store.writeCount(), writes) // and wrote nothing more
	// The dud's disable ends at 60 ms; a live timer would put it on
	// probation and let a request claim its probe with a write.
	natstest.Eventually(t, 5*time.Second, func() bool { return b.Phase("/azure/dud/") == broker.Probation }, "the disable ends by the clock")
	for range 10 {
		pick(b, "/azure/")
	}
	is.Equal(store.writeCount(), writes)                                           // no claim was written
	is.Equal(b.Routers("/azure/"), []string{"/azure/gpt35turbo/", "/azure/gpt4/"}) // the snapshot was not rebuilt
}
