package replica_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/ops"
	"github.com/gecholog/broker/replica"
)

// TestReplicasOfTheMajorityStayWhileItElectsTheBucketsLeader cuts off the
// node that leads the bucket's stream. The two nodes left elect a leader,
// which takes seconds, and meanwhile the replicas on them say their view
// may be stale and ask the other servers whether the bucket answers there.
// Once it answers through one, it answers through their own as well:
// none may move, since a move costs the calls in flight on the way.
func TestReplicasOfTheMajorityStayWhileItElectsTheBucketsLeader(t *testing.T) {
	c := natstest.StartPartitionable(t, 3)
	type member struct {
		r    *replica.Replica
		logs *syncBuffer
		on   string
	}
	var fleet []member
	for i := range 4 {
		node := c.Servers[1+i%2]
		logs := &syncBuffer{}
		r, stop := startReplica(t, replica.Config{NATS: natsconn.Settings{Servers: node.ClientURL()}, KVReplicas: 3,
			Policy: broker.Policy{DisabledTime: time.Minute}, ID: fmt.Sprintf("replica-%d", i+1), Logger: jsonLogger(logs)})
		defer stop()
		fleet = append(fleet, member{r: r, logs: logs, on: r.Server()})
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, m := range fleet {
				t.Logf("%s logged:\n%s", m.r.ID(), m.logs.String())
			}
		}
	})
	c.Lead(t, natstest.ConnectURL(t, c.Servers[1].ClientURL()), "KV_gl_broker", 0)

	c.Cut(0)
	cut := time.Now()
	const (
		lost = "the router health bucket does not answer: serving with what this replica knows and the failures it sees itself, which it writes once the bucket answers"
		back = "the router health bucket answers again; reading every router's health"
	)
	// A replica moves only while it says its view may be stale: once each
	// has said the bucket answers again, the election is over for it.
	natstest.Eventually(t, 40*time.Second, func() bool {
		for _, m := range fleet {
			if _, ok := logLine(m.logs.String(), back); !ok {
				return false
			}
		}
		return true
	}, "every replica saying the bucket answers again after the election")
	t.Logf("every replica heard the bucket again %v after the cut", time.Since(cut).Round(time.Millisecond))
	for _, m := range fleet {
		if _, ok := logLine(m.logs.String(), lost); !ok {
			t.Errorf("%s never said its bucket did not answer: the election was too short to test", m.r.ID())
		}
		moved := strings.Count(m.logs.String(), "moving to another NATS server")
		if now := m.r.Server(); moved > 0 || now != m.on {
			t.Errorf("%s moved %d times during the election, from %s to %s", m.r.ID(), moved, m.on, now)
		}
	}
}

// TestADisableByHandRidesOutTheElectionAndTheReplicasTakeItAtOnce cuts
// off the node that leads the bucket's stream and at once disables a
// router by hand through a node of the majority. The command must wait
// for the majority to elect a leader (saying so) and land the disable
// within its timeout, not fail; and the replicas it reaches must hold the
// router out as soon as it finds the bucket silent, before the bucket can
// take the write, as they do a failure another replica announced.
func TestADisableByHandRidesOutTheElectionAndTheReplicasTakeItAtOnce(t *testing.T) {
	c := natstest.StartPartitionable(t, 3)
	var fleet []*replica.Replica
	for i := range 2 {
		r, stop := startReplica(t, replica.Config{NATS: natsconn.Settings{Servers: c.Servers[1+i].ClientURL()}, KVReplicas: 3,
			Policy: broker.Policy{DisabledTime: time.Minute}, ID: fmt.Sprintf("replica-%d", i+1), Logger: jsonLogger(io.Discard)})
		defer stop()
		fleet = append(fleet, r)
	}
	c.Lead(t, natstest.ConnectURL(t, c.Servers[1].ClientURL()), "KV_gl_broker", 0)
	majorityLeads := func() bool {
		return c.Servers[1].JetStreamIsStreamLeader("$G", "KV_gl_broker") || c.Servers[2].JetStreamIsStreamLeader("$G", "KV_gl_broker")
	}

	c.Cut(0)
	cut := time.Now()
	var out, progress bytes.Buffer
	done := make(chan error, 1)
	go func() {
		target := ops.Target{NATS: natsconn.Settings{Servers: c.Servers[1].ClientURL()}, Bucket: replica.DefaultBucket,
			Pools: broker.DefaultPools(), Progress: &progress}
		done <- ops.DisableRouter(context.Background(), target, ops.Disable{Router: "/azure/gpt4/", Reason: "maintenance", By: "ops"},
			func(string) string { return "" }, &out)
	}()
	for _, r := range fleet {
		natstest.Eventually(t, 4*time.Second, func() bool { return r.Broker().Phase("/azure/gpt4/") == broker.Manual },
			"%s holding /azure/gpt4/ out on the command's word", r.ID())
		if majorityLeads() {
			t.Fatalf("%s held the router out only %v after the cut, once the majority led the bucket: too late to tell the news from the bucket", r.ID(), time.Since(cut))
		}
	}
	t.Logf("both replicas held the router out %v after the cut, while the majority elected", time.Since(cut).Round(time.Millisecond))

	var err error
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("broker disable still running 30 s after the cut")
	}
	took := time.Since(cut)
	if err != nil {
		t.Fatalf("broker disable through the majority during its election: %v (it said meanwhile: %q)", err, progress.String())
	}
	t.Logf("broker disable landed %v after the cut; it said meanwhile: %s; then: %s", took.Round(time.Millisecond), strings.TrimSpace(progress.String()), strings.TrimSpace(out.String()))
	if !strings.Contains(progress.String(), "waiting for it up to") || strings.Count(progress.String(), "\n") != 1 {
		t.Errorf("while waiting it said %q, want one line that it waits, for how long", progress.String())
	}
	if !strings.HasPrefix(out.String(), "disabled /azure/gpt4/ ") {
		t.Errorf("it said %q", out.String())
	}
	// The bucket's word then holds it, past the announcement's hold.
	for _, r := range fleet {
		natstest.Eventually(t, 10*time.Second, func() bool {
			for _, v := range r.Broker().View(time.Now()) {
				if v.Router == "/azure/gpt4/" {
					return v.Phase == broker.Manual && !v.Provisional
				}
			}
			return false
		}, "%s holding the bucket's manual disable", r.ID())
	}
}
