package ops_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
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

// TestStatusThroughANodeCutOffFromItsClusterShowsItsCopyMarkedStale cuts
// one node of three off from the other two (its routes stall; its clients
// still reach it), as a network partition does, after a disable every
// node holds; the majority then disables another router. `broker status`
// through the cut-off node, whose bucket has no leader, prints that
// node's copy within its timeout, marked stale with the cause, and says
// so in its error; through a node of the majority it prints the bucket,
// unmarked.
func TestStatusThroughANodeCutOffFromItsClusterShowsItsCopyMarkedStale(t *testing.T) {
	c := natstest.StartPartitionable(t, 3)
	ctx := context.Background()
	js := natstest.JetStreamURL(t, c.Servers[1].ClientURL())
	var st *kv.Store
	within(t, 30*time.Second, "the bucket created on all three nodes", func(ctx context.Context) (err error) {
		st, err = kv.Open(ctx, js, kv.Config{Bucket: replica.DefaultBucket, Replicas: 3})
		return err
	})
	defer st.Close()
	target := func(url string) ops.Target {
		return ops.Target{NATS: natsconn.Settings{Servers: url}, Bucket: replica.DefaultBucket, Pools: broker.DefaultPools()}
	}
	cutoff, majority := target(c.Servers[0].ClientURL()), target(c.Servers[1].ClientURL())
	// A bucket just created may take a moment to take a write.
	within(t, 30*time.Second, "the bucket taking a disable", func(ctx context.Context) error {
		return ops.DisableRouter(ctx, majority, ops.Disable{Router: "/azure/dud/", For: time.Hour, Reason: "test"}, func(string) string { return "" }, io.Discard)
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

	c.Cut(0)
	// Written by the store opened before the cut: broker disable reads
	// the key first with a direct get, which a server passes to a random
	// member of the stream, the cut-off one too, until the routes to it
	// close (minutes, with nats-server's default route pings).
	within(t, 30*time.Second, "the majority taking a disable", func(ctx context.Context) error {
		_, err := st.Put(ctx, broker.Record{Router: "/azure/gpt4/", Reason: "test", At: time.Now(), Until: time.Now().Add(time.Hour), By: "test", Manual: true})
		return err
	})

	status := func(tgt ops.Target, o ops.StatusOptions) (string, time.Duration, error) {
		var out bytes.Buffer
		start := time.Now()
		err := ops.Status(ctx, tgt, o, &out)
		return out.String(), time.Since(start), err
	}
	out, took, err := status(cutoff, ops.StatusOptions{})
	t.Logf("through the cut-off node, after %v: %v\n%s", took.Round(time.Millisecond), err, out)
	if !errors.Is(err, ops.ErrStale) {
		t.Fatalf("status through the cut-off node: %v, want ops.ErrStale", err)
	}
	if took > 12*time.Second { // its timeout is 10 s, the dial aside
		t.Errorf("status through the cut-off node took %v", took)
	}
	says(t, out, "STALE: bucket gl_broker does not answer through "+c.Servers[0].ClientURL())
	if cause := strings.SplitN(lines(out)[0], ": ", 3)[2]; !strings.Contains(cause, "KV_gl_broker") && !strings.Contains(cause, "JetStream") || strings.Contains(cause, "deadline") {
		t.Errorf("the cause %q names neither the stream nor JetStream, or is a bare deadline", cause)
	}
	says(t, out, "showing n1's own copy of the bucket, up to revision") // whose copy
	says(t, err.Error(), "printed n1's copy")
	if row := tableRow(out, "/azure/dud/"); !strings.Contains(row, "disabled") {
		t.Errorf("the copy's /azure/dud/ row is %q, want it disabled", row)
	}
	if row := tableRow(out, "/azure/gpt4/"); !strings.Contains(row, "enabled") {
		t.Errorf("the copy's /azure/gpt4/ row is %q, want it enabled: the copy misses the majority's disable", row)
	}

	out, _, err = status(cutoff, ops.StatusOptions{JSON: true})
	if !errors.Is(err, ops.ErrStale) {
		t.Fatalf("status --json through the cut-off node: %v, want ops.ErrStale", err)
	}
	var rows []struct {
		Router string
		State  string
		Stale  *struct{ Cause, Node string }
	}
	if err := json.Unmarshal([]byte(out), &rows); err != nil || len(rows) == 0 {
		t.Fatalf("status --json printed %q: %v", out, err)
	}
	for _, r := range rows {
		if r.Stale == nil || r.Stale.Node != "n1" || r.Stale.Cause == "" {
			t.Errorf("row %s's stale is %+v, want n1 and the cause", r.Router, r.Stale)
		}
	}

	out, took, err = status(majority, ops.StatusOptions{})
	if err != nil {
		t.Fatalf("status through the majority: %v", err)
	}
	t.Logf("through the majority, after %v", took.Round(time.Millisecond))
	if strings.Contains(out, "STALE") {
		t.Errorf("status through the majority is marked stale:\n%s", out)
	}
	for _, r := range []string{"/azure/dud/", "/azure/gpt4/"} {
		if row := tableRow(out, r); !strings.Contains(row, "disabled") {
			t.Errorf("the majority's %s row is %q, want it disabled", r, row)
		}
	}
	out, _, err = status(majority, ops.StatusOptions{JSON: true})
	if err != nil || strings.Contains(out, `"stale"`) {
		t.Errorf("status --json through the majority: %v, with a stale field: %v", err, strings.Contains(out, `"stale"`))
	}
	c.Heal(0)
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
