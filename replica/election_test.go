package replica_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/testutil/natstest"
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
