package main

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natstest"
)

// replicaSet is replicas running in this process, each a full serve() with
// its own NATS connection and bucket watcher.
type replicaSet struct {
	replicas []*broker.Broker
	logs     []*syncBuffer
	stop     func()
}

// runReplicas starts n replicas of base, named replica-1 to replica-n, and
// waits until they all serve. stop must run before the servers stop; when
// the test fails, each replica's log is printed.
func runReplicas(t *testing.T, base config, n int) *replicaSet {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	rs := &replicaSet{stop: func() { cancel(); wg.Wait() }, replicas: make([]*broker.Broker, n)}
	t.Cleanup(func() {
		if t.Failed() {
			for i, l := range rs.logs {
				t.Logf("replica-%d logged:\n%s", i+1, l.String())
			}
		}
	})
	ready := make(chan struct{}, n)
	for i := range n {
		c := base
		c.id = fmt.Sprintf("replica-%d", i+1)
		logs := &syncBuffer{}
		rs.logs = append(rs.logs, logs)
		wg.Add(1)
		go func() {
			defer wg.Done()
			log := slog.New(slog.NewJSONHandler(logs, nil))
			if err := serve(ctx, c, log, func(b *broker.Broker) { rs.replicas[i] = b; ready <- struct{}{} }); err != nil {
				t.Errorf("replica %s: %v", c.id, err)
			}
		}()
	}
	for range n {
		select {
		case <-ready:
		case <-time.After(15 * time.Second):
			rs.stop()
			t.Fatal("replicas not ready within 15s")
		}
	}
	return rs
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
