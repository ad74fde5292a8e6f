package ops

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/safetext"
	"github.com/gecholog/broker/kv"
)

// When the bucket does not answer through the server status asked (the
// server is cut off from the rest of its cluster, or the cluster has no
// leader for the bucket), status shows what that server knows instead of
// failing: the bucket as the server's own copy of its stream holds it
// (kv.ReadNodeCopy), and the replicas heard there, as ever. The bucket is
// the only truth, and that copy may miss whatever the rest of the cluster
// wrote since; so it is marked stale above the table, in every row of
// --json, and in status's error, which scripts see as exit code 3.

// ErrStale means status printed a view that is not the truth: the bucket
// did not answer, and what was printed is one server's copy of it.
var ErrStale = errors.New("stale")

// staleNote says why and how a status is stale. Its JSON names are the
// interface for scripts: add fields, never rename them.
type staleNote struct {
	// Cause is why the bucket does not answer, in words an operator can
	// act on.
	Cause  string `json:"cause"`
	Bucket string `json:"bucket"`
	// Server is the server asked, without credentials; Node is the name
	// of the server whose copy is shown.
	Server string `json:"server"`
	Node   string `json:"node"`
	// Revision is the last revision the copy holds, and Changed when the
	// newest change it holds was written (RFC 3339; null: it holds none).
	Revision uint64  `json:"revision"`
	Changed  *string `json:"changed"`
}

// copyWait bounds reading the server's copy; staleProbeWait the one more
// question to the bucket's stream that names why it did not answer.
const (
	copyWait       = 2 * time.Second
	staleProbeWait = time.Second
)

// whyStale asks the bucket's stream through n why it did not answer, once
// more: its own answer (no leader, no quorum) says more than a read's
// cause (no answer, or no JetStream meta leader to create the read's
// consumer); it returns the better of the two.
func whyStale(ctx context.Context, t Target, n node, cause error) error {
	pctx, cancel := context.WithTimeout(ctx, staleProbeWait)
	defer cancel()
	if err := kv.Probe(pctx, n.js, t.Bucket); kv.Leaderless(err) || err != nil && !kv.Leaderless(cause) && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return cause
}

// readStale reads what the server n knows of the bucket, which did not
// answer through it because of cause: its own copy of the bucket, and the
// replicas f hears there.
func readStale(ctx context.Context, t Target, policy broker.Policy, n node, f *fleet, cause error) (statusView, error) {
	why := safetext.Clip(kv.Explain(t.Bucket, cause), 2*safetext.MaxShown) // it may quote the server
	if errors.Is(cause, context.DeadlineExceeded) || errors.Is(cause, context.Canceled) {
		why = fmt.Sprintf("no answer from KV_%s within %v (its leader cannot be reached from this server, or the cluster is electing one)", t.Bucket, truthWait)
	}
	cctx, cancel := context.WithTimeout(ctx, copyWait)
	c, err := kv.ReadNodeCopy(cctx, n.nc, t.Bucket)
	cancel()
	if err != nil {
		return statusView{}, fmt.Errorf("no answer from bucket %s through %s: %s; nor could this server's own copy be read (%s; a user who may not publish to $JS.API.DIRECT.GET.KV_%s gets no answer): %w",
			t.Bucket, n.server, why, natsconn.OneLine(err.Error()), t.Bucket, cause)
	}
	if err := f.listenOut(ctx); err != nil {
		return statusView{}, fmt.Errorf("no answer from bucket %s through %s: %s: %w", t.Bucket, n.server, why, err)
	}
	now := time.Now()
	note := &staleNote{Cause: why, Bucket: t.Bucket, Server: n.server, Revision: c.Revision,
		Node: safetext.Clip(n.nc.ConnectedServerName(), safetext.MaxShown)} // a name from the wire
	if note.Node == "" {
		note.Node = "the server"
	}
	if !c.Changed.IsZero() {
		changed := c.Changed.UTC().Format(time.RFC3339)
		note.Changed = &changed
	}
	fv := f.view(now)
	rows := statusRows(t.Pools, policy, c.Listed, fv, now)
	for i := range rows {
		rows[i].Stale = note
	}
	l := configLatest{bucket: kv.ConfigBucket(t.Bucket)}
	return statusView{head: staleHeading(t, note, c, fv, now), rows: rows, revs: l.revisions(fv), l: l, now: now, stale: note}, nil
}

// staleHeading is status's heading when the bucket did not answer: the
// cause, whose copy is shown and how old its newest change is, then the
// replicas heard, as ever.
func staleHeading(t Target, note *staleNote, c kv.NodeCopy, fv fleetView, now time.Time) string {
	var h strings.Builder
	fmt.Fprintf(&h, "STALE: bucket %s does not answer through %s at %s: %s\n",
		note.Bucket, note.Server, now.UTC().Format(time.RFC3339), note.Cause)
	switch {
	case c.Changed.IsZero():
		fmt.Fprintf(&h, "showing %s's own copy of the bucket, which holds no change: ", note.Node)
	default:
		fmt.Fprintf(&h, "showing %s's own copy of the bucket, up to revision %d, last changed at %s (%v ago): ",
			note.Node, c.Revision, *note.Changed, now.Sub(c.Changed).Round(time.Second))
	}
	h.WriteString("not the truth, as it misses whatever the rest of the cluster wrote since\n")
	h.WriteString("pools: this command's own, as the fleet's configuration is not read while the bucket does not answer\n")
	writeFleetHeading(&h, t, fv, now)
	return h.String()
}
