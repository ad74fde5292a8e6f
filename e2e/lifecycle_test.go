package e2e

// A replica's life as an operator sees it: stopped by a signal while calls
// are in flight, watched through /readyz while it drains, killed and started
// again in the middle of a disable.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/matryer/is"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/internal/testutil/natstest"
)

// The drain tests give the replica a drain timeout (BROKER_DRAIN_TIMEOUT)
// that no machine's speed can reach: each holds thousands of calls, which
// the drain answers in a second or two on an idle machine and in more than
// the default 10 s on a busy one under -race, and a drain cut short there
// would fail the test for the machine's load, not for the broker. The
// deadlines after the signal only bound a hang: a replica that drains
// everything exits long before them.
const (
	drainTimeout = 2 * time.Minute
	// exitWithin is how long a drained replica may take to exit: its drain,
	// the 5 s it may then wait for its bucket writes (replica's
	// DefaultWriteDrainTimeout), and a margin.
	exitWithin = drainTimeout + time.Minute
	// answeredWithin bounds how long replies the replica sent before it
	// exited take to reach the test's own connection, on loopback.
	answeredWithin = 30 * time.Second
)

// drainCutShort matches the line a replica logs when its drain times out,
// leaving calls unanswered: "calls still in flight after 2m0s; stopping
// anyway", whatever the timeout.
var drainCutShort = line{"a drain cut short", func(l logLine) bool {
	return strings.HasPrefix(l.msg, "calls still in flight after ") && strings.HasSuffix(l.msg, "; stopping anyway")
}}

// README, Configuration: "SIGINT or SIGTERM stops it taking calls, lets it
// finish the replies and KV writes in flight, and exits 0."
func TestStopSignalAnswersTheCallsInFlightFinishesTheirBucketWritesAndExitsZero(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		sig  syscall.Signal
	}{
		{"SIGTERM", syscall.SIGTERM},
		{"SIGINT", syscall.SIGINT},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			is := is.New(t)
			store := t.TempDir()
			s := natstest.Start(t, natstest.WithStoreDir(store))
			r := startReplica(t, replicaEnv(s, "replica-1", "BROKER_DRAIN_TIMEOUT", drainTimeout.String()))
			nc := natstest.Connect(t, s)
			bucket := openBucket(t, nc)
			c := newCalls(t, nc)

			// The replica is paused while the calls are sent, so none can be
			// answered before the signal: every one is in flight when it
			// comes. The failure report comes last.
			r.pause(t)
			const n = 5000
			for i := range n {
				c.publish(t, i, askRouter)
			}
			report := n
			c.publish(t, report, fmt.Appendf(nil, `{"gl_path":%q,"egress_status_code":502}`, dud))
			c.flush(t)
			inFlight := n + 1 - c.count()
			is.Equal(inFlight, n+1)           // no call was answered before the signal
			is.Equal(len(keys(t, bucket)), 0) // and the failure is not written yet
			// JetStream goes away, as while its server restarts, so that the
			// report's write fails and is retried: it is still in flight
			// when the drain ends and the replica goes on to stop.
			is.NoErr(s.DisableJetStream())
			r.signal(t, tc.sig)
			r.resume(t)

			// A failed write is counted before it is retried; the listener
			// closes last, so it still answers while the replica stops.
			natstest.Eventually(t, 10*time.Second, func() bool {
				n, _ := r.metric(t, "broker_kv_errors_total")
				return n > 0
			}, "%s counts a failed write to the bucket", r.id)
			select {
			case <-r.exited:
				t.Fatalf("%s exited with its bucket write unfinished", r.id)
			default:
			}
			// Enabling JetStream while a JetStream API request comes in is a
			// data race inside nats-server 2.15.2 (setJetStreamExportSubs
			// against apiDispatch), which -race reports: the replica sends
			// none while it is paused.
			r.pause(t)
			quiet(t, s)                                                           // and the server has handled what it sent before
			is.NoErr(s.EnableJetStream(&server.JetStreamConfig{StoreDir: store})) // back within the 5 s a stopping replica waits
			r.resume(t)
			is.Equal(r.exitCode(t, exitWithin), 0)
			stopping := r.waitFor(t, time.Second, logged("stopping: finishing calls in flight"))
			written := r.waitFor(t, time.Second, logged("router health written to the bucket after retrying", "router", dud))
			stopped := r.waitFor(t, time.Second, logged("stopped"))
			if !(stopping.index < written.index && written.index < stopped.index) {
				t.Errorf("lines %d %q, %d %q, %d %q: want the write finished after the drain began and before the replica stopped",
					stopping.index, stopping.msg, written.index, written.msg, stopped.index, stopped.msg)
			}
			is.Equal(len(r.linesSince(0, drainCutShort)), 0) // the drain answered every call it held

			// Every call in flight is answered for real. The replica has
			// exited, so the replies are at most on their way through this
			// test's own connection.
			c.waitAnswered(t, answeredWithin, n+1)
			for i := range n {
				a, _ := c.answer(i)
				is.True(slices.Contains(pool, routerOf(t, a.msg))) // a router of the pool
			}
			a, _ := c.answer(report)
			is.Equal(len(a.msg.Data), 0) // the report's empty reply
			// Nothing but this replica writes to the bucket, and it has
			// exited: its write landed before it did.
			rec := readRecord(t, bucket, dud)
			is.Equal(rec.Status, 502)
			is.Equal(rec.By, "replica-1")
			t.Logf("%s with %d calls in flight: all answered, the failure written to the bucket %v after the drain began, exit 0",
				tc.name, inFlight, written.at.Sub(stopping.at).Round(time.Millisecond))
		})
	}
}

// README, Metrics and health: /readyz answers 503 "stopping" while the
// replica drains after SIGTERM, so that whatever routes work by it stops
// while the replica answers the calls it holds.
func TestReadyzSaysStoppingWhileTheReplicaDrains(t *testing.T) {
	t.Parallel()
	is := is.New(t)
	s := natstest.Start(t)
	// At debug level the replica logs each call it answers, with the time
	// by its own clock: the drain lasts until the last of those.
	r := startReplica(t, replicaEnv(s, "replica-1", "BROKER_LOG_LEVEL", "debug", "BROKER_DRAIN_TIMEOUT", drainTimeout.String()))
	url := "http://" + r.addr + "/readyz"
	client := &http.Client{Timeout: 2 * time.Second}
	before := readyz(client, url)
	is.NoErr(before.err)
	is.Equal(before.code, http.StatusOK)
	is.Equal(before.body, "ok\n") // ready while it serves

	nc := natstest.Connect(t, s)
	c := newCalls(t, nc)
	// Paused, the replica holds a burst it has not begun to answer when
	// the signal comes, as in the test above, and draining it takes a
	// while.
	r.pause(t)
	const n = 10_000
	for i := range n {
		c.publish(t, i, askRouter)
	}
	c.flush(t)

	// /readyz is asked again and again, from before the signal until the
	// process is gone, at most once a millisecond, and for no longer than
	// the test waits for the exit. Its answers go to the test through a
	// channel, not through t.
	polled := make(chan []probe, 1)
	go func() {
		var probes []probe
		defer func() { polled <- probes }()
		pace := time.NewTicker(time.Millisecond)
		defer pace.Stop()
		for end := time.Now().Add(exitWithin); time.Now().Before(end); {
			select {
			case <-r.exited:
				return
			case <-pace.C:
			}
			probes = append(probes, readyz(client, url))
		}
	}()
	r.signal(t, syscall.SIGTERM)
	r.resume(t)
	is.Equal(r.exitCode(t, exitWithin), 0)
	var probes []probe
	select {
	case probes = <-polled:
	case <-time.After(30 * time.Second): // its last ask may wait out the client's timeout
		t.Fatal("the /readyz poller did not end within 30s of the exit")
	}
	is.Equal(len(r.linesSince(0, drainCutShort)), 0) // the drain was not cut short
	c.waitAnswered(t, answeredWithin, n)             // the drain answered every call

	choices := r.linesSince(0, choice)
	if len(choices) < n {
		t.Fatalf("%s logged %d choices, fewer than the %d calls it answered", r.id, len(choices), n)
	}
	lastCall := choices[len(choices)-1].at // the drain's last answer, by the replica's clock
	stopping, ok := 0, 0
	for _, p := range probes {
		switch {
		case p.err != nil:
		case p.code == http.StatusServiceUnavailable && p.body == "stopping\n" && p.at.Before(lastCall):
			stopping++
		case p.code == http.StatusOK:
			ok++
		}
	}
	t.Logf("/readyz asked %d times from SIGTERM on: %d answers of 503 \"stopping\" received before the drain answered its last call, %d of 200 \"ok\" (before the signal was handled)",
		len(probes), stopping, ok)
	is.True(stopping > 0) // /readyz said "stopping" while the replica was still answering the calls it held
}

// README, Failure policy: "A replica restarted mid-disable reads the
// record's until and honours the exact time left; the backoff level and the
// failure count survive restarts too." Each replica here is killed
// (SIGKILL), so nothing it holds can be written on its way out, and the
// next starts from the bucket alone.
func TestARestartedReplicaKeepsTheFailureCountTheTimeLeftAndTheBackoffLevel(t *testing.T) {
	t.Parallel()
	is := is.New(t)
	s := natstest.Start(t)
	// Two failures disable a router, for 6 s, then 12 s at backoff level 1.
	const disabledTime = 6 * time.Second
	env := func(id string) map[string]string {
		return replicaEnv(s, id, "DISABLED_TIME", "0.1", "BROKER_FAILURE_THRESHOLD", "2")
	}
	gw := newGateway(t, s)
	nc := natstest.Connect(t, s)
	js, err := jetstream.New(nc)
	is.NoErr(err)

	// One failure of the two: counted by the replicas, which tell each
	// other on the stats subject; nothing is written.
	stats, err := nc.SubscribeSync("broker.stats." + bucketName)
	is.NoErr(err)
	first := startReplica(t, env("replica-1"))
	second := startReplica(t, env("replica-2"))
	bucket := openBucket(t, nc)
	is.NoErr(gw.report(dud, 502))
	knows := map[string]bool{} // replica → tells of one failure of the dud
	for deadline := time.Now().Add(5 * time.Second); !(knows["replica-1"] && knows["replica-2"]); {
		m, err := stats.NextMsg(time.Until(deadline))
		if err != nil {
			t.Fatalf("both replicas telling of the failure: %v (so far %v)", err, knows)
		}
		if m.Header.Get("Broker-Counts") != "" {
			continue // counts only, binary: a failure is told in the whole word, at once
		}
		var msg struct {
			ID      string `json:"id"`
			Routers []struct {
				Router  string  `json:"router"`
				Failing []int64 `json:"failing"`
			} `json:"routers"`
		}
		is.NoErr(json.Unmarshal(m.Data, &msg))
		for _, r := range msg.Routers {
			if r.Router == dud && len(r.Failing) == 1 {
				knows[msg.ID] = true
			}
		}
	}
	is.NoErr(stats.Unsubscribe())
	is.Equal(len(keys(t, bucket)), 0)   // one failure of two disables nothing
	is.Equal(lastSeq(t, js), uint64(0)) // and writes nothing
	first.kill(t)

	// The count outlives the replica that heard it: one more failure, to
	// the replica left or a new one, is the second.
	newcomer := startReplica(t, env("replica-5"))
	is.NoErr(gw.report(dud, 502))
	waitKeys(t, bucket, 5*time.Second, dud)
	rec := readRecord(t, bucket, dud)
	if rec.By != "replica-2" && rec.By != "replica-5" {
		t.Fatalf("the record is by %q, not by replica-2 or replica-5, which got the second failure", rec.By)
	}
	is.Equal(rec.Level, 0)
	is.True((rec.Until.Sub(rec.At) - disabledTime).Abs() < time.Millisecond) // DISABLED_TIME 0.1 minutes
	second.kill(t)
	newcomer.kill(t)

	// Mid-disable, a new replica holds the router out until the record's
	// until, to the nanosecond, and not a moment less. The order of its
	// lines shows it knew before it served, and the line's own time when it
	// ended the disable: no poll of its state could show either.
	third := startReplica(t, env("replica-3"))
	if !time.Now().Before(rec.Until) {
		t.Fatalf("replica-3 served only %v after the disable ended: too late to show it honours the time left", time.Since(rec.Until))
	}
	l := third.waitFor(t, time.Second, logged("router disabled", "router", dud))
	if l.index > third.serving.index {
		t.Fatalf("%s logged the disable in line %d, after it served in line %d", third.id, l.index, third.serving.index)
	}
	until, err := time.Parse(time.RFC3339Nano, l.attrs["until"])
	is.NoErr(err)
	if !until.Equal(rec.Until) {
		t.Fatalf("%s holds the router out until %v, not the record's %v: a new DISABLED_TIME from the restart?", third.id, until, rec.Until)
	}
	is.Equal(l.attrs["backoff_level"], "0")
	p := third.waitFor(t, time.Until(rec.Until)+3*time.Second, logged("router on probation: one probe call decides", "router", dud))
	if p.at.Before(rec.Until.Add(-time.Millisecond)) {
		t.Fatalf("%s put the router on probation at %v, before the record's until %v", third.id, p.at, rec.Until)
	}

	// A success on probation ends the disable; its memo keeps the level and
	// when it ended.
	is.NoErr(gw.report(dud, 200))
	third.waitState(t, 5*time.Second, dud, "enabled")
	memo := waitLastWrite(t, js, dud, "a memo of the ended disable", func(w lastWrite) bool { return w.deleted && !w.rec.Ended.IsZero() })
	is.Equal(memo.rec.Level, 0)
	third.kill(t)

	// The level survives: disabled again by a new replica before it has
	// recovered (within DISABLED_TIME of the end), the router is out at the
	// next level, twice as long.
	fourth := startReplica(t, env("replica-4"))
	is.NoErr(gw.report(dud, 502))
	is.NoErr(gw.report(dud, 502))
	st := fourth.waitState(t, 5*time.Second, dud, "disabled")
	waitKeys(t, bucket, 5*time.Second, dud)
	rec = readRecord(t, bucket, dud)
	if gap := rec.At.Sub(memo.rec.Ended); gap >= disabledTime {
		t.Fatalf("the next disable came %v after the last ended, a whole DISABLED_TIME: the level has decayed, and cannot show it survived", gap)
	}
	is.Equal(st.Level, 1)                                                      // the replica acts on level 1
	is.Equal(rec.Level, 1)                                                     // and the record says so
	is.True((rec.Until.Sub(rec.At) - 2*disabledTime).Abs() < time.Millisecond) // twice DISABLED_TIME
}

// quiet waits until server s has handled every message its clients sent:
// its count of messages in holds across three reads 20 ms apart. A client
// that is paused sends nothing more, but what it wrote before may still
// be on its way through the server's read loop.
func quiet(t *testing.T, s *server.Server) {
	t.Helper()
	inMsgs := func() int64 {
		v, err := s.Varz(nil)
		if err != nil {
			t.Fatalf("varz: %v", err)
		}
		return v.InMsgs
	}
	last, same := inMsgs(), 0
	natstest.Eventually(t, 5*time.Second, func() bool {
		time.Sleep(20 * time.Millisecond) // the interval between reads, not a guess at an event
		n := inMsgs()
		if n == last {
			same++
		} else {
			last, same = n, 0
		}
		return same >= 2
	}, "the server handled what its clients sent")
}
