package ops_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/gecholog/broker/ops"
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
	p := startPartitioned(t)
	p.cut(t)
	cutoff, majority := p.cutoff, p.majority
	ctx := context.Background()

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
	says(t, out, "STALE: bucket gl_broker does not answer through "+p.c.Servers[0].ClientURL())
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
	p.c.Heal(0)
}
