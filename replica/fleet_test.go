package replica_test

import (
	"context"
	"fmt"
	"log/slog"
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
