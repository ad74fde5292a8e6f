package ops_test

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/kv"
	"github.com/gecholog/broker/ops"
	"github.com/gecholog/broker/replica"
)

// partitioned is a cluster of three nodes whose bucket holds a disable
// of /azure/dud/ in every node's copy, n1's too, ready for cut to cut n1
// off from the others; startPartitioned starts one.
type partitioned struct {
	c        *natstest.Cluster
	st       *kv.Store // opened through n2
	cutoff   ops.Target
	majority ops.Target
}

func startPartitioned(t *testing.T) partitioned {
	t.Helper()
	c := natstest.StartPartitionable(t, 3)
	js := natstest.JetStreamURL(t, c.Servers[1].ClientURL())
	var st *kv.Store
	within(t, 30*time.Second, "the bucket created on all three nodes", func(ctx context.Context) (err error) {
		st, err = kv.Open(ctx, js, kv.Config{Bucket: replica.DefaultBucket, Replicas: 3})
		return err
	})
	t.Cleanup(st.Close)
	target := func(url string) ops.Target {
		return ops.Target{NATS: natsconn.Settings{Servers: url}, Bucket: replica.DefaultBucket, Pools: broker.DefaultPools()}
	}
	p := partitioned{c: c, st: st, cutoff: target(c.Servers[0].ClientURL()), majority: target(c.Servers[1].ClientURL())}
	// A bucket just created may take a moment to take a write.
	within(t, 30*time.Second, "the bucket taking a disable", func(ctx context.Context) error {
		return ops.DisableRouter(ctx, p.majority, ops.Disable{Router: "/azure/dud/", For: time.Hour, Reason: "test"}, func(string) string { return "" }, io.Discard)
	})
	// The write needs two of the three copies: wait for the node's own,
	// and for the node to answer direct gets from it.
	natstest.Eventually(t, 20*time.Second, func() bool { return natstest.AnswersDirectGets(c.Servers[0], "KV_gl_broker") },
		"n1 answering direct gets from its own copy")
	nc := natstest.ConnectURL(t, c.Servers[0].ClientURL())
	within(t, 10*time.Second, "the disable in n1's copy", func(ctx context.Context) error {
		cp, err := kv.ReadNodeCopy(ctx, nc, replica.DefaultBucket)
		if err == nil && len(cp.Listed) != 1 {
			err = fmt.Errorf("n1's copy lists %d keys", len(cp.Listed))
		}
		return err
	})
	return p
}

// cut cuts n1 off from the others, and has the majority disable
// /azure/gpt4/, which n1's copy then misses.
func (p partitioned) cut(t *testing.T) {
	t.Helper()
	p.c.Cut(0)
	// Written by the store opened before the cut: broker disable reads
	// the key first with a direct get, which a server passes to a random
	// member of the stream, the cut-off one too, until the routes to it
	// close (minutes, with nats-server's default route pings).
	within(t, 30*time.Second, "the majority taking a disable", func(ctx context.Context) error {
		_, err := p.st.Put(ctx, broker.Record{Router: "/azure/gpt4/", Reason: "test", At: time.Now(), Until: time.Now().Add(time.Hour), By: "test", Manual: true})
		return err
	})
}

// within fails the test unless try, given 5 s at a time, succeeds within
// d; it says the last failure.
func within(t *testing.T, d time.Duration, what string, try func(context.Context) error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := try(ctx)
		cancel()
		switch {
		case err == nil:
			return
		case time.Now().After(deadline):
			t.Fatalf("not within %v: %s: %v", d, what, err)
		}
		time.Sleep(5 * time.Millisecond) // between tries, each of which waits on the servers
	}
}

// says fails the test when out does not hold want.
func says(t *testing.T, out, want string) {
	t.Helper()
	if !strings.Contains(out, want) {
		t.Errorf("the output does not say %q; it says:\n%s", want, out)
	}
}

// lines are the lines of s, without the last newline.
func lines(s string) []string { return strings.Split(strings.TrimRight(s, "\n"), "\n") }

// tableRow is the status table's line for router.
func tableRow(out, router string) string {
	for line := range strings.Lines(out) {
		if f := strings.Fields(line); len(f) > 1 && f[1] == router {
			return line
		}
	}
	return ""
}
