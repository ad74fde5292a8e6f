package replica_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/replica"
)

// The harness the replica tests share: replicas run in this process on
// servers of each mode, waiting on what every replica's broker acts on,
// gecholog's calls, a load of them, and the replicas' JSON logs.

// replicaSet is replicas running in this process, each a full replica.Run
// with its own NATS connection and bucket watcher.
type replicaSet struct {
	t        *testing.T
	fleet    *replica.Fleet
	replicas []*broker.Broker
	logs     []*syncBuffer
}

// runReplicas starts n replicas of base, named replica-1 to replica-n, and
// waits until they all serve. stop must run before the servers stop; the
// test's cleanup runs it too. When the test fails, each replica's log is
// printed.
func runReplicas(t *testing.T, base replica.Config, n int) *replicaSet {
	t.Helper()
	rs := &replicaSet{t: t}
	logs := map[string]*syncBuffer{}
	for i := range n {
		l := &syncBuffer{}
		logs[fmt.Sprintf("replica-%d", i+1)] = l
		rs.logs = append(rs.logs, l)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for i, l := range rs.logs {
				t.Logf("replica-%d logged:\n%s", i+1, l.String())
			}
		}
	})
	f, err := replica.StartFleet(context.Background(), base, n, func(id string) *slog.Logger {
		return slog.New(slog.NewJSONHandler(logs[id], nil))
	})
	if err != nil {
		t.Fatal(err)
	}
	rs.fleet = f
	t.Cleanup(rs.stop)
	for _, r := range f.Replicas {
		rs.replicas = append(rs.replicas, r.Broker())
	}
	return rs
}

// stop stops every replica and waits for them; it fails the test if one
// ended with an error. Calling it again does nothing.
func (rs *replicaSet) stop() {
	if rs.fleet == nil {
		return
	}
	f := rs.fleet
	rs.fleet = nil
	if err := f.Stop(); err != nil {
		rs.t.Errorf("replicas stopped with: %v", err)
	}
}

// every waits until cond holds on every replica.
func (rs *replicaSet) every(t *testing.T, d time.Duration, cond func(*broker.Broker) bool, what string) {
	t.Helper()
	natstest.Eventually(t, d, func() bool {
		for _, b := range rs.replicas {
			if !cond(b) {
				return false
			}
		}
		return true
	}, "%s on every replica", what)
}

// serverMode is a NATS server the replicas run against, and the bucket
// they find there. Tests of the bucket's behaviour run in every mode:
// nats-server 2.15 (embedded) with per-message TTL, 2.15 with a plain
// bucket created beforehand, and nats-server 2.10, the version the
// gecholog container ships, at JetStream API level 0, where expiry mode is
// the only one.
type serverMode struct {
	name  string
	v210  bool   // a nats-server 2.10 process; else the embedded 2.15
	plain bool   // a plain bucket is created before the replicas start
	mode  string // the ttl_mode the replicas must detect
}

func serverModes() []serverMode {
	return []serverMode{
		{name: "2.15 ttl", mode: "ttl"},
		{name: "2.15 expiry", plain: true, mode: "expiry"},
		{name: "2.10 expiry", v210: true, mode: "expiry"},
	}
}

// expiryModes are the modes in which the replicas delete ended records
// themselves.
func expiryModes() []serverMode {
	var out []serverMode
	for _, m := range serverModes() {
		if m.mode == "expiry" {
			out = append(out, m)
		}
	}
	return out
}

// testServer is a running server of either kind.
type testServer struct {
	url      string
	shutdown func() // stops it and waits; again does nothing
}

// start runs the mode's server on loopback. It is shut down when the test
// ends; opts (natstest.WithStoreDir, onPort, natstest.WithoutJetStream)
// apply to both kinds.
func (m serverMode) start(t *testing.T, opts ...natstest.Option) testServer {
	t.Helper()
	if m.v210 {
		b := natstest.StartBinary(t, natstest.NATS210(t), opts...)
		return testServer{url: b.ClientURL(), shutdown: b.Shutdown}
	}
	s := natstest.Start(t, opts...)
	return testServer{url: s.ClientURL(), shutdown: func() { s.Shutdown(); s.WaitForShutdown() }}
}

// startReplica runs one replica with c until stop, which waits for it to
// end; the test's cleanup stops it too, so that it stops before the
// servers do. It fails the test if the replica does not serve within 15 s,
// and if Run ends with an error.
func startReplica(t *testing.T, c replica.Config) (r *replica.Replica, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan *replica.Replica, 1)
	done := make(chan struct{})
	c.Ready = func(r *replica.Replica) { ready <- r }
	go func() {
		defer close(done)
		if err := replica.Run(ctx, c); err != nil {
			t.Errorf("replica %s: %v", c.ID, err)
		}
	}()
	stop = func() { cancel(); <-done }
	t.Cleanup(stop)
	select {
	case r = <-ready:
		return r, stop
	case <-done:
		t.Fatalf("replica %s stopped before it served", c.ID)
	case <-time.After(15 * time.Second):
		t.Fatalf("replica %s not serving within 15s", c.ID)
	}
	return nil, nil
}

// eachMode runs f as a subtest for each mode, all at once: these tests
// mostly wait on timers, and t.Parallel would hold them to -parallel
// (GOMAXPROCS, 2 on CI). testing.T.Run may be called from several
// goroutines; eachMode returns when every subtest has.
func eachMode(t *testing.T, modes []serverMode, f func(t *testing.T, m serverMode)) {
	t.Helper()
	var wg sync.WaitGroup
	for _, m := range modes {
		wg.Go(func() { t.Run(m.name, func(t *testing.T) { f(t, m) }) })
	}
	wg.Wait()
}

// syncBuffer is a buffer safe for the goroutines that write to it.
type syncBuffer = natstest.Buffer

// jsonLogger logs JSON lines to w, as the broker command does.
func jsonLogger(w io.Writer) *slog.Logger { return slog.New(slog.NewJSONHandler(w, nil)) }

// logLine finds the first JSON log line with msg and returns its fields.
func logLine(out, msg string) (map[string]any, bool) {
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil && m["msg"] == msg {
			return m, true
		}
	}
	return nil, false
}

// countLines counts JSON log lines with msg logged from..to.
func countLines(out, msg string, from, to time.Time) int {
	n := 0
	for _, line := range strings.Split(out, "\n") {
		var m struct {
			Time time.Time `json:"time"`
			Msg  string    `json:"msg"`
		}
		if json.Unmarshal([]byte(line), &m) == nil && m.Msg == msg && !m.Time.Before(from) && m.Time.Before(to) {
			n++
		}
	}
	return n
}

// freePort finds a loopback port nobody listens on, for a server that
// must come back on the same address.
func freePort(t *testing.T) int {
	t.Helper()
	ports, err := natstest.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	return ports[0]
}

// onPort makes a server listen on port.
func onPort(port int) natstest.Option { return func(o *server.Options) { o.Port = port } }

// phaseIs says whether a replica's broker holds router in phase ph.
func phaseIs(router string, ph broker.Phase) func(*broker.Broker) bool {
	return func(b *broker.Broker) bool { return b.Phase(router) == ph }
}

// awaitDisconnected waits up to d until every replica has lost its
// connection to NATS.
func (rs *replicaSet) awaitDisconnected(t *testing.T, d time.Duration) {
	t.Helper()
	var on []string
	natstest.Eventually(t, d, func() bool {
		on = on[:0]
		for _, r := range rs.fleet.Replicas {
			if s := r.Server(); s != "" {
				on = append(on, r.ID()+" on "+s)
			}
		}
		return len(on) == 0
	}, "every replica disconnected; still connected: %v", &on)
}

// serveOne runs one replica on url with a short re-attach interval. The
// caller defers stop, so the replica stops before the servers do.
func serveOne(t *testing.T, url string, logs io.Writer) (r *replica.Replica, stop func()) {
	t.Helper()
	return startReplica(t, replica.Config{
		NATS: natsconn.Settings{Servers: url}, Policy: broker.Policy{DisabledTime: time.Minute}, ID: "replica-1",
		Reattach: 100 * time.Millisecond, Logger: jsonLogger(logs),
	})
}

// startCallLoad is callers asking the broker for a router of the pool,
// each waiting at most timeout for the answer, until the test stops them.
func startCallLoad(t *testing.T, nc *nats.Conn, callers int, timeout time.Duration) *natstest.Load {
	return natstest.StartLoad(t, nc, callers, "coburn.gl.broker", []byte(askRouter), timeout, func(m *nats.Msg) error {
		if !bytes.HasPrefix(m.Data, []byte(`{"gl_path":"/azure/`)) {
			return fmt.Errorf("reply %q is not a router of the pool", m.Data)
		}
		return nil
	})
}

// servedThroughout checks the calls that ended within from..to: it
// returns how many were answered, the errors of those that were not, and
// the longest time within from..to in which no call was answered.
func servedThroughout(calls []natstest.Call, from, to time.Time) (answered int, failed []error, gap time.Duration) {
	ends := []time.Time{from}
	for _, c := range calls {
		if c.End.Before(from) || c.End.After(to) {
			continue
		}
		if c.Err != nil {
			failed = append(failed, c.Err)
			continue
		}
		answered++
		ends = append(ends, c.End)
	}
	ends = append(ends, to)
	slices.SortFunc(ends, time.Time.Compare)
	for i := 1; i < len(ends); i++ {
		gap = max(gap, ends[i].Sub(ends[i-1]))
	}
	return answered, failed, gap
}

// ask makes a request context and returns the router chosen.
func ask(t *testing.T, nc *nats.Conn, ingress string) string {
	t.Helper()
	return askWith(t, nc, fmt.Appendf(nil, `{"gl_path":%q}`, ingress))
}

// askWith sends the request context msg, as gecholog sends one with the
// fields its processor entry includes, and returns the router chosen.
func askWith(t *testing.T, nc *nats.Conn, msg []byte) string {
	t.Helper()
	m, err := nc.Request(replica.DefaultSubject, msg, 2*time.Second)
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

func tell(t *testing.T, nc *nats.Conn, router string, status int) {
	t.Helper()
	if _, err := nc.Request(replica.DefaultSubject, fmt.Appendf(nil, `{"gl_path":%q,"egress_status_code":%d}`, router, status), 2*time.Second); err != nil {
		t.Fatalf("response context: %v", err)
	}
}

// says fails the test unless got, the text of what, holds want, and shows
// what it holds when it does not.
func says(t testing.TB, what, got, want string) {
	t.Helper()
	if !strings.Contains(got, want) {
		t.Fatalf("%s does not say %q; it says:\n%s", what, want, got)
	}
}

// saysLast fails the test unless got, the text of what, ends with want,
// and shows what it holds when it does not.
func saysLast(t testing.TB, what, got, want string) {
	t.Helper()
	if !strings.HasSuffix(got, want) {
		t.Fatalf("%s does not end with %q; it says:\n%s", what, want, got)
	}
}

// neverSays fails the test when got, the text of what, holds unwanted, and
// shows what it holds.
func neverSays(t testing.TB, what, got, unwanted string) {
	t.Helper()
	if strings.Contains(got, unwanted) {
		t.Fatalf("%s says %q; it says:\n%s", what, unwanted, got)
	}
}

// oneLine fails the test unless err is one line, and shows it when it is
// not.
func oneLine(t testing.TB, err error) {
	t.Helper()
	neverSays(t, "the error", err.Error(), "\n")
}

// isErr fails the test unless err is target, and shows the error that
// came when it is not.
func isErr(t testing.TB, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("error %v, want %v", err, target)
	}
}

// subscribeFor subscribes f to subject for the rest of the test, and
// returns once the server has the subscription.
func subscribeFor(t *testing.T, nc *nats.Conn, subject string, f func(*nats.Msg)) {
	t.Helper()
	sub, err := nc.Subscribe(subject, f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}
