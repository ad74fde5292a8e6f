package e2e

// A replica's life as an operator sees it: stopped by a signal while calls
// are in flight, watched through /readyz while it drains, killed and started
// again in the middle of a disable.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/matryer/is"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/internal/natstest"
)

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
			r := startReplica(t, replicaEnv(s, "replica-1"))
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

			r.waitFor(t, 10*time.Second, logged("could not write router health to the bucket; other replicas do not know yet; retrying", "router", dud))
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
			is.NoErr(s.EnableJetStream(&server.JetStreamConfig{StoreDir: store})) // back within the 5 s a stopping replica waits
			r.resume(t)
			is.Equal(r.exitCode(t, 20*time.Second), 0)
			stopping := r.waitFor(t, time.Second, logged("stopping: finishing calls in flight"))
			written := r.waitFor(t, time.Second, logged("router health written to the bucket after retrying", "router", dud))
			stopped := r.waitFor(t, time.Second, logged("stopped"))
			is.True(stopping.index < written.index && written.index < stopped.index)
			is.Equal(len(r.linesSince(0, logged("calls still in flight after 10s; stopping anyway"))), 0)

			// Every call in flight is answered for real. The replica has
			// exited, so the replies are at most on their way through this
			// test's own connection.
			c.waitAnswered(t, 5*time.Second, n+1)
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
	r := startReplica(t, replicaEnv(s, "replica-1", "BROKER_METRICS_ADDR", "127.0.0.1:0", "BROKER_LOG_LEVEL", "debug"))
	url := "http://" + r.waitFor(t, time.Second, logged("metrics listening")).attrs["addr"] + "/readyz"
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
		for end := time.Now().Add(30 * time.Second); time.Now().Before(end); {
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
	is.Equal(r.exitCode(t, 20*time.Second), 0)
	var probes []probe
	select {
	case probes = <-polled:
	case <-time.After(5 * time.Second):
		t.Fatal("the /readyz poller did not end within 5s of the exit")
	}
	c.waitAnswered(t, 5*time.Second, n) // the drain answered every call

	choices := r.linesSince(0, choice)
	is.True(len(choices) >= n)
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
	is.True(rec.By == "replica-2" || rec.By == "replica-5") // disabled by whichever got the second failure
	is.Equal(rec.Level, 0)
	is.True((rec.Until.Sub(rec.At) - disabledTime).Abs() < time.Millisecond) // DISABLED_TIME 0.1 minutes
	second.kill(t)
	newcomer.kill(t)

	// Mid-disable, a new replica holds the router out until the record's
	// until, to the nanosecond, and not a moment less.
	third := startReplica(t, env("replica-3"))
	if !time.Now().Before(rec.Until) {
		t.Fatalf("replica-3 served only %v after the disable ended: too late to show it honours the time left", time.Since(rec.Until))
	}
	l := third.waitFor(t, time.Second, logged("router disabled", "router", dud))
	is.True(l.index < third.serving.index) // known before the first call
	until, err := time.Parse(time.RFC3339Nano, l.attrs["until"])
	is.NoErr(err)
	is.True(until.Equal(rec.Until)) // the record's until, not a new DISABLED_TIME from the restart
	is.Equal(l.attrs["backoff_level"], "0")
	p := third.waitFor(t, time.Until(rec.Until)+3*time.Second, logged("router on probation: one probe call decides", "router", dud))
	is.True(!p.at.Before(rec.Until.Add(-time.Millisecond))) // on probation at until, not before

	// A success on probation ends the disable; its memo keeps the level and
	// when it ended.
	is.NoErr(gw.report(dud, 200))
	third.waitFor(t, 5*time.Second, logged("router enabled", "router", dud))
	memo := waitLastWrite(t, js, dud, "a memo of the ended disable", func(w lastWrite) bool { return w.deleted && !w.rec.Ended.IsZero() })
	is.Equal(memo.rec.Level, 0)
	third.kill(t)

	// The level survives: disabled again by a new replica before it has
	// recovered (within DISABLED_TIME of the end), the router is out at the
	// next level, twice as long.
	fourth := startReplica(t, env("replica-4"))
	is.NoErr(gw.report(dud, 502))
	is.NoErr(gw.report(dud, 502))
	l = fourth.waitFor(t, 5*time.Second, logged("router disabled", "router", dud))
	waitKeys(t, bucket, 5*time.Second, dud)
	rec = readRecord(t, bucket, dud)
	if gap := rec.At.Sub(memo.rec.Ended); gap >= disabledTime {
		t.Fatalf("the next disable came %v after the last ended, a whole DISABLED_TIME: the level has decayed, and cannot show it survived", gap)
	}
	is.Equal(l.attrs["backoff_level"], "1")
	is.Equal(rec.Level, 1)
	is.True((rec.Until.Sub(rec.At) - 2*disabledTime).Abs() < time.Millisecond) // twice DISABLED_TIME
}

// askRouter is gecholog's request context for the default ingress.
var askRouter = fmt.Appendf(nil, `{"gl_path":%q}`, ingress)

// choice matches the debug line of a replica choosing a router for the
// default ingress.
var choice = line{"a debug line choosing a router for " + ingress, func(l logLine) bool {
	return l.level == "DEBUG" && l.attrs["ingress"] == ingress && l.attrs["router"] != ""
}}

// routerOf reads a request context's reply; "" for an empty one.
func routerOf(t *testing.T, m *nats.Msg) string {
	t.Helper()
	if len(m.Data) == 0 {
		return ""
	}
	var r struct {
		GLPath string `json:"gl_path"`
	}
	if err := json.Unmarshal(m.Data, &r); err != nil {
		t.Fatalf("reply %q is not {\"gl_path\": router}", m.Data)
	}
	return r.GLPath
}

// calls are processor calls published without waiting for their replies,
// as gecholog's many clients make them, each with its own reply subject, so
// that the test knows which were answered, with what and when.
type calls struct {
	nc    *nats.Conn
	inbox string

	mu      sync.Mutex
	answers map[int]answer // by call
	grew    chan struct{}  // closed and replaced when an answer arrives
}

type answer struct {
	msg *nats.Msg
	at  time.Time // when the test received it
}

func newCalls(t *testing.T, nc *nats.Conn) *calls {
	t.Helper()
	c := &calls{nc: nc, inbox: nc.NewInbox(), answers: map[int]answer{}, grew: make(chan struct{})}
	sub, err := nc.Subscribe(c.inbox+".*", func(m *nats.Msg) {
		i, err := strconv.Atoi(m.Subject[len(c.inbox)+1:])
		if err != nil {
			return
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		c.answers[i] = answer{m, time.Now()}
		close(c.grew)
		c.grew = make(chan struct{})
	})
	if err == nil {
		// A reply this test's client dropped would look like a call the
		// broker lost.
		err = sub.SetPendingLimits(-1, -1)
	}
	if err == nil {
		err = nc.Flush()
	}
	if err != nil {
		t.Fatalf("subscribe to replies: %v", err)
	}
	return c
}

// publish sends call i with body, without waiting.
func (c *calls) publish(t *testing.T, i int, body []byte) {
	t.Helper()
	if err := c.nc.PublishRequest(brokerTopic, c.inbox+"."+strconv.Itoa(i), body); err != nil {
		t.Fatalf("publish call %d: %v", i, err)
	}
}

// flush returns once the server has every call published before: it has
// routed them to the replica, whose connection holds them on their way.
func (c *calls) flush(t *testing.T) {
	t.Helper()
	if err := c.nc.FlushTimeout(10 * time.Second); err != nil {
		t.Fatalf("flush: %v", err)
	}
}

func (c *calls) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.answers)
}

func (c *calls) answer(i int) (answer, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	a, ok := c.answers[i]
	return a, ok
}

// answered waits at most d for call i's answer and says whether it came.
func (c *calls) answered(i int, d time.Duration) bool {
	timeout := time.NewTimer(d)
	defer timeout.Stop()
	for {
		c.mu.Lock()
		_, ok := c.answers[i]
		grew := c.grew
		c.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-grew:
		case <-timeout.C:
			return false
		}
	}
}

// waitAnswered fails the test unless calls 0 to n-1 are all answered
// within d.
func (c *calls) waitAnswered(t *testing.T, d time.Duration, n int) {
	t.Helper()
	deadline := time.Now().Add(d)
	for i := range n {
		if !c.answered(i, time.Until(deadline)) {
			t.Fatalf("call %d of %d not answered within %v (%d answered)", i, n, d, c.count())
		}
	}
}

// probe is one answer from /readyz.
type probe struct {
	code int
	body string
	at   time.Time // when it was received
	err  error
}

func readyz(client *http.Client, url string) probe {
	resp, err := client.Get(url)
	if err != nil {
		return probe{err: err, at: time.Now()}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return probe{code: resp.StatusCode, body: string(b), at: time.Now(), err: err}
}

// lastWrite is the newest message on a router's key: its live record, or
// the memo in the delete marker that enabled it, which `nats kv get` hides
// and the broker reads.
type lastWrite struct {
	rec     record
	deleted bool // a delete marker (KV-Operation: DEL)
}

// waitLastWrite waits at most 5 s for the newest message on key to be one
// that want accepts, and returns it.
func waitLastWrite(t *testing.T, js jetstream.JetStream, key, what string, want func(lastWrite) bool) lastWrite {
	t.Helper()
	stream, err := js.Stream(t.Context(), "KV_"+bucketName)
	if err != nil {
		t.Fatalf("stream of bucket %s: %v", bucketName, err)
	}
	var w lastWrite
	natstest.Eventually(t, 5*time.Second, func() bool {
		m, err := stream.GetLastMsgForSubject(t.Context(), "$KV."+bucketName+"."+key)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return false
		}
		if err != nil {
			t.Fatalf("last message on key %s: %v", key, err)
		}
		w = lastWrite{deleted: m.Header.Get("KV-Operation") == "DEL"}
		if len(m.Data) > 0 {
			if err := json.Unmarshal(m.Data, &w.rec); err != nil {
				t.Fatalf("key %s holds %q: %v", key, m.Data, err)
			}
		}
		return want(w)
	}, "key %s: %s", key, what)
	return w
}

// lastSeq is the bucket stream's last sequence: every write ever made to
// the bucket, as it keeps one revision per key.
func lastSeq(t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
	stream, err := js.Stream(t.Context(), "KV_"+bucketName)
	if err != nil {
		t.Fatalf("stream of bucket %s: %v", bucketName, err)
	}
	info, err := stream.Info(t.Context())
	if err != nil {
		t.Fatalf("stream info: %v", err)
	}
	return info.State.LastSeq
}
