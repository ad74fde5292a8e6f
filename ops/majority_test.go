package ops_test

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/kv"
	"github.com/gecholog/broker/ops"
	"github.com/gecholog/broker/replica"
)

// TestWritesThroughTheMajorityDoNotWaitOnACutOffMember cuts one node of
// three off from the others (its routes stall, and stay open for a minute
// or more with nats-server's default route pings). A server hands a
// direct get to a random member of the bucket's stream, the cut-off one
// too, so the read before a write timed out about one time in three
// through a node of the majority. Each `broker disable` through the
// majority, and each read and compare-and-set a replica on the majority
// makes for a failure, must now land, well within the time a try has.
func TestWritesThroughTheMajorityDoNotWaitOnACutOffMember(t *testing.T) {
	const (
		tries = 10
		each  = 4 * time.Second // a try that takes this long has failed
	)
	c := natstest.StartPartitionable(t, 3)
	js := natstest.JetStreamURL(t, c.Servers[1].ClientURL())
	var st *kv.Store
	within(t, 30*time.Second, "the bucket created on all three nodes", func(ctx context.Context) (err error) {
		st, err = kv.Open(ctx, js, kv.Config{Bucket: replica.DefaultBucket, Replicas: 3, Owner: "r1"})
		return err
	})
	defer st.Close()
	majority := ops.Target{NATS: natsconn.Settings{Servers: c.Servers[1].ClientURL()}, Bucket: replica.DefaultBucket, Pools: broker.DefaultPools()}
	disable := func(ctx context.Context) error {
		return ops.DisableRouter(ctx, majority, ops.Disable{Router: "/azure/dud/", For: time.Hour, Reason: "test"}, func(string) string { return "" }, io.Discard)
	}
	within(t, 30*time.Second, "the bucket taking a disable", disable)
	// Without n1's member among those answering direct gets, the test
	// could not fail.
	natstest.Eventually(t, 20*time.Second, func() bool { return natstest.AnswersDirectGets(c.Servers[0], "KV_gl_broker") },
		"n1 answering direct gets from its own copy")

	c.Cut(0)
	// If n1 led the stream, the majority elects a leader first.
	within(t, 30*time.Second, "the majority taking a write", func(ctx context.Context) error {
		_, err := st.Put(ctx, broker.Record{Router: "/azure/gpt4/", Reason: "test", At: time.Now(), By: "test", Manual: true})
		return err
	})

	measure := func(what string, try func(context.Context) error) {
		t.Helper()
		var slowest, total time.Duration
		failed := 0
		for range tries {
			ctx, cancel := context.WithTimeout(context.Background(), each)
			start := time.Now()
			err := try(ctx)
			took := time.Since(start)
			cancel()
			total += took
			slowest = max(slowest, took)
			if err != nil {
				failed++
				t.Logf("%s: failed after %v: %v", what, took.Round(time.Millisecond), err)
			}
		}
		t.Logf("%s: %d of %d failed; mean %v, slowest %v", what, failed, tries,
			(total / tries).Round(time.Millisecond), slowest.Round(time.Millisecond))
		if failed > 0 {
			t.Errorf("%s through the majority: %d of %d tries failed within %v", what, failed, tries, each)
		}
	}
	measure("broker disable", disable)
	// What a replica does for a failure (broker.Broker's write): read the
	// key's last message, then compare-and-set over its revision, and
	// again on a conflict. A member of the majority may answer the read a
	// write behind its leader, and the leader refuses that revision: a
	// conflict costs a retry, not the write.
	conflicts := 0
	measure("a replica's failure write", func(ctx context.Context) error {
		for {
			cur, _, err := st.Latest(ctx, "/azure/gpt3/")
			if err != nil {
				return err
			}
			now := time.Now()
			_, err = st.Update(ctx, broker.Record{Router: "/azure/gpt3/", Reason: "status 500", At: now, Until: now.Add(time.Minute), By: "r1"}, cur.Revision)
			if !errors.Is(err, kv.ErrConflict) {
				return err
			}
			conflicts++
		}
	})
	t.Logf("a replica's failure write: %d reads a write behind, each written on the next try", conflicts)
}
