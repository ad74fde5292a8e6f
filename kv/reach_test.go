package kv_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/kv"
)

// reachIn waits up to d for the store's Reach to satisfy ok and returns it.
func reachIn(t *testing.T, s *kv.Store, d time.Duration, ok func(kv.Reach) bool, what string) kv.Reach {
	t.Helper()
	var r kv.Reach
	natstest.Eventually(t, d, func() bool { r = s.Reach(); return ok(r) }, "%s (last: %+v)", what, r)
	return r
}

func answering(r kv.Reach) bool { return r.Cause == "" && !r.LastAnswer.IsZero() }

func TestReachSaysWithinSecondsThatTheBucketStoppedAnsweringAndWhenItIsBack(t *testing.T) {
	srv := natstest.Start(t)
	proxy := natstest.StartProxy(t, srv.ClientURL())
	js, err := jetstream.New(natstest.ConnectURL(t, proxy.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	s := open(t, js)
	watch(t, context.Background(), s, func(broker.Event) {})
	reachIn(t, s, 5*time.Second, answering, "the bucket answering")

	proxy.Stall() // packets stop; the connection stays open
	lost := time.Now()
	r := reachIn(t, s, 5*time.Second, func(r kv.Reach) bool { return r.Cause != "" }, "a cause once the link stalls")
	t.Logf("said after %v: %q", time.Since(lost).Round(time.Millisecond), r.Cause)
	if strings.Contains(r.Cause, "deadline exceeded") || !strings.Contains(r.Cause, "KV_health") {
		t.Errorf("cause %q is a bare deadline or does not name the bucket's stream", r.Cause)
	}
	if !r.LastAnswer.Before(lost) {
		t.Errorf("last answer %v is after the link stalled at %v", r.LastAnswer, lost)
	}

	proxy.Resume()
	back := time.Now()
	r = reachIn(t, s, 5*time.Second, func(r kv.Reach) bool { return answering(r) && r.LastAnswer.After(back) }, "the bucket answering again")
	t.Logf("answering again after %v", r.LastAnswer.Sub(back).Round(time.Millisecond))
}

func TestReachNamesALostQuorumAlthoughTheLeftServerStillAnswers(t *testing.T) {
	nodes := natstest.StartCluster(t, 3)
	nc := natstest.ConnectURL(t, nodes[0].ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	s, err := kv.Open(context.Background(), js, kv.Config{Bucket: "health", Owner: "test", Replicas: 3})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(s.Close)
	watch(t, context.Background(), s, func(broker.Event) {})
	reachIn(t, s, 10*time.Second, answering, "the bucket answering")
	// Idle, a healthy bucket keeps answering with its quorum: its peers
	// answer the leader's heartbeats.
	quiet := time.Now().Add(4 * time.Second)
	for time.Now().Before(quiet) {
		if r := s.Reach(); r.Cause != "" {
			t.Fatalf("a healthy idle cluster's bucket said %q", r.Cause)
		}
		time.Sleep(100 * time.Millisecond)
	}

	nodes[1].Shutdown()
	nodes[2].Shutdown()
	lost := time.Now()
	r := reachIn(t, s, 10*time.Second, func(r kv.Reach) bool { return r.Cause != "" }, "a cause once two of three nodes are gone")
	t.Logf("said after %v: %q", time.Since(lost).Round(time.Millisecond), r.Cause)
	if !strings.Contains(r.Cause, "KV_health") && !strings.Contains(r.Cause, "meta leader") {
		t.Errorf("cause %q names neither the bucket's stream nor the meta leader", r.Cause)
	}
	if strings.Contains(r.Cause, "deadline exceeded") {
		t.Errorf("cause %q is a bare deadline, not a cause", r.Cause)
	}

	// A write that gets no answer meanwhile is put down to the cause,
	// for broker_kv_write_failures_total.
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	_, err = s.Update(ctx, record("/azure/dud/", time.Now().Add(time.Minute)), 0)
	var c interface{ Cause() string }
	if !errors.As(err, &c) || (c.Cause() != "no_quorum" && c.Cause() != "no_leader" && c.Cause() != "timeout") {
		t.Errorf("a write without quorum failed with %v, want its cause no_quorum, no_leader or timeout", err)
	} else {
		t.Logf("a write without quorum: %s (%v)", c.Cause(), err)
	}
}
