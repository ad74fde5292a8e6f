package replica_test

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natstest"
	"github.com/gecholog/broker/replica"
)

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
