package replica_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/replica"
)

// TestRunRefusesBucketReplicasOutOfRange: the range the broker command's
// -kv-replicas reads is the one a replica checks, before it connects.
func TestRunRefusesBucketReplicasOutOfRange(t *testing.T) {
	// Without the check the replica would wait for a server; the deadline
	// ends that wait, and Run then returns nil.
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	for _, n := range []int{-1, replica.KVReplicasRange.Max + 1} {
		err := replica.Run(ctx, replica.Config{KVReplicas: n, NATS: natsconn.Settings{Servers: "nats://127.0.0.1:1"}})
		if err == nil || !strings.Contains(err.Error(), "kv-replicas") {
			t.Errorf("KVReplicas %d: got %v, want an error naming kv-replicas", n, err)
		}
	}
}
