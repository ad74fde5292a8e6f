package replica_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/kv"
	"github.com/gecholog/broker/replica"
)

// The fault tests' harness: a fleet on a cluster, which node serves each
// replica, how soon calls are answered again, and manual disables written
// and read back through a cluster that may be losing a node.

// startFaultFleet runs n replicas on the NATS URL(s) url, creating the
// bucket with kvReplicas replicas. The caller defers stop, so that the
// replicas stop before the servers do.
func startFaultFleet(t *testing.T, url string, n, kvReplicas int) *replicaSet {
	t.Helper()
	// FleetConfig as the broker command runs them.
	return runReplicas(t, replica.Config{NATS: natsconn.Settings{Servers: url}, KVReplicas: kvReplicas, FleetConfig: true,
		Policy: broker.Policy{DisabledTime: time.Minute}}, n)
}

// servingNodes says which of urls each replica is connected to.
func (f *replicaSet) servingNodes(t *testing.T, urls []string) []int {
	t.Helper()
	on := make([]int, len(f.replicas))
	for i, r := range f.fleet.Replicas {
		if on[i] = slices.Index(urls, r.Server()); on[i] < 0 {
			t.Fatalf("replica-%d is connected to %q, not a node of the cluster", i+1, r.Server())
		}
	}
	return on
}

// chosen is how many calls each replica has answered with a router.
func (f *replicaSet) chosen() []uint64 {
	n := make([]uint64, len(f.replicas))
	for i, b := range f.replicas {
		n[i] = b.Stats().Calls[broker.Chosen]
	}
	return n
}

// answersAgain waits until every replica has answered a call more than
// base says, and returns for each how long after since that was seen.
func (f *replicaSet) answersAgain(t *testing.T, base []uint64, since time.Time, d time.Duration) []time.Duration {
	t.Helper()
	took := make([]time.Duration, len(f.replicas))
	natstest.Eventually(t, d, func() bool {
		all := true
		for i, n := range f.chosen() {
			if took[i] == 0 && n > base[i] {
				took[i] = time.Since(since)
			}
			all = all && took[i] > 0
		}
		return all
	}, "every replica answers again")
	return took
}

// logLineWithPrefix finds the first JSON log line whose msg starts with
// prefix and returns its fields.
func logLineWithPrefix(out, prefix string) (map[string]any, bool) {
	for _, line := range strings.Split(out, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && strings.HasPrefix(fmt.Sprint(m["msg"]), prefix) {
			return m, true
		}
	}
	return nil, false
}

// waitInterest waits until the replicas' subscriptions have reached the
// cluster node nc is connected to: a replica serves once its own node has
// its subscription, and routes carry it to the others a moment later.
func waitInterest(t *testing.T, nc *nats.Conn) {
	t.Helper()
	natstest.Eventually(t, 5*time.Second, func() bool {
		_, err := nc.Request("coburn.gl.broker", []byte(`{"gl_path":"/not/an/ingress/"}`), time.Second)
		return err == nil
	}, "the replicas' subscriptions reach %s", nc.ConnectedUrl())
}

// putManual disables router by hand, as `nats kv put` would.
func putManual(t *testing.T, js jetstream.JetStream, router string) {
	t.Helper()
	if err := tryPutManual(js, router); err != nil {
		t.Fatal(err)
	}
}

func tryPutManual(js jetstream.JetStream, router string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	bucket, err := js.KeyValue(ctx, "gl_broker")
	if err != nil {
		return fmt.Errorf("open bucket: %w", err)
	}
	r, err := kv.Encode(broker.Record{Router: router, Manual: true, Reason: "maintenance", At: time.Now(), By: "alice"})
	if err != nil {
		return err
	}
	if _, err := bucket.Put(ctx, router, r); err != nil {
		return fmt.Errorf("put %s: %w", router, err)
	}
	return nil
}

// waitRecord waits until router has a live record in the bucket and
// returns it; right after a node loss the stream may still elect a leader.
func waitRecord(t *testing.T, js jetstream.JetStream, router string, d time.Duration) broker.Record {
	t.Helper()
	var r broker.Record
	natstest.Eventually(t, d, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		bucket, err := js.KeyValue(ctx, "gl_broker")
		if err != nil {
			return false
		}
		e, err := bucket.Get(ctx, router)
		if err != nil {
			return false
		}
		r, err = kv.Decode(router, e.Value())
		if err != nil {
			t.Fatalf("record %s: %v", router, err)
		}
		return true
	}, "a record for %s in the bucket", router)
	return r
}

func roundAll(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}
