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

// TestRunRefusesASessionHeaderThatIsNoHeaderName: the session header is
// checked before the replica connects, with one line saying what is
// wrong, and a long one is shown clipped.
func TestRunRefusesASessionHeaderThatIsNoHeaderName(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	for _, tc := range []struct{ header, says string }{
		{"Session Id", `session-header "Session Id": byte 8 (' ') is not allowed in a header name`},
		{"Session-Id\n", `session-header "Session-Id ": byte 11 ('\n') is not allowed in a header name`},
		{strings.Repeat("a", 257), `: 257 bytes: a header name is at most 256`},
	} {
		err := replica.Run(ctx, replica.Config{SessionHeader: tc.header, NATS: natsconn.Settings{Servers: "nats://127.0.0.1:1"}})
		if err == nil || !strings.Contains(err.Error(), tc.says) || len(err.Error()) > 400 {
			t.Errorf("SessionHeader %.20q: got %v, want one short line saying %q", tc.header, err, tc.says)
		}
	}
}
