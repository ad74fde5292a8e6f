package replica_test

import (
	"bytes"
	"io"
	"testing"
	"time"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/ops"
	"github.com/gecholog/broker/replica"
)

// TestDisableNamesTheReplicaThatCannotHearTheBucket runs `broker disable`
// beside three replicas, one of which hears nothing the server delivers
// (no watcher, no news, no answer to a read of the bucket) while it still
// speaks on the stats subject, as a replica cut off from its bucket does.
// The line says the disable is in the bucket, not "on every replica",
// confirmed by 2 of 3, and names that replica as not yet; that replica's
// view indeed does not hold it. Once it hears again it takes the disable,
// and the enable that follows is confirmed by all three.
func TestDisableNamesTheReplicaThatCannotHearTheBucket(t *testing.T) {
	s := natstest.Start(t)
	proxy := natstest.StartProxy(t, s.ClientURL())
	cfg := func(id, url string) replica.Config {
		return replica.Config{NATS: natsconn.Settings{Servers: url}, Policy: broker.Policy{DisabledTime: time.Minute},
			ID: id, Logger: jsonLogger(io.Discard)}
	}
	startReplica(t, cfg("replica-1", s.ClientURL()))
	startReplica(t, cfg("replica-2", s.ClientURL()))
	cut, _ := startReplica(t, cfg("replica-3", proxy.ClientURL()))
	tgt := ops.Target{NATS: natsconn.Settings{Servers: s.ClientURL()}, Bucket: replica.DefaultBucket, Pools: broker.DefaultPools()}
	run := func(what string, op func(*bytes.Buffer) error) string {
		var out bytes.Buffer
		if err := op(&out); err != nil {
			t.Fatalf("broker %s: %v", what, err)
		}
		return out.String()
	}
	var table string
	natstest.Eventually(t, 10*time.Second, func() bool {
		table = run("status", func(out *bytes.Buffer) error { return ops.Status(t.Context(), tgt, ops.StatusOptions{}, out) })
		return bytes.Contains([]byte(table), []byte("replicas: 3 heard"))
	}, "broker status hearing the three replicas; it says:\n%s", &table)

	proxy.Deafen(func(string) bool { return true })
	out := run("disable", func(out *bytes.Buffer) error {
		return ops.DisableRouter(t.Context(), tgt, ops.Disable{Router: "/azure/gpt4/", For: time.Minute, Reason: "test", By: "alice"},
			func(string) string { return "" }, out)
	})
	says(t, "broker disable", out, "disabled /azure/gpt4/ in bucket gl_broker for 1m0s, until ")
	saysLast(t, "broker disable", out, "; manual, by alice: test; confirmed by 2 of 3 replicas within 2s; not yet: replica-3 (a replica cut off from the bucket applies it once it hears the bucket again)\n")
	neverSays(t, "broker disable", out, "on every replica")
	if ph := cut.Broker().Phase("/azure/gpt4/"); ph == broker.Manual {
		t.Errorf("replica-3, named as not yet, holds the disable already")
	}

	proxy.Hear()
	natstest.Eventually(t, 30*time.Second, func() bool { return cut.Broker().Phase("/azure/gpt4/") == broker.Manual },
		"replica-3 taking the disable once it hears the bucket again")
	out = run("enable", func(out *bytes.Buffer) error { return ops.EnableRouter(t.Context(), tgt, "/azure/gpt4/", out) })
	says(t, "broker enable", out, "enabled /azure/gpt4/ on every replica; removed the manual disable by alice (test, until ")
	saysLast(t, "broker enable", out, "; confirmed by all 3 replicas\n")
}
