package ops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/safetext"
	"github.com/gecholog/broker/kv"
	"github.com/gecholog/broker/replica"
)

// Drift: every replica tells, with its counts, the revision of the
// fleet's configuration it runs (replica.ConfigTold); status lists them
// below the routers and marks those out of step with the newest revision
// in the configuration bucket. What a replica told is shown, never
// trusted for anything else: a forged word on the stats subject changes
// this list, not what any replica runs.

// configWait bounds reading the configuration bucket's newest revision. A
// user whose permissions do not grant that bucket gets no answer at all
// (the server drops a request the user may not publish), and status must
// not wait opTimeout for it.
const configWait = time.Second

// configLatest is the newest revision of the fleet's configuration.
type configLatest struct {
	bucket     string
	rev        uint64         // 0: no bucket, or it holds no revision
	entry      kv.ConfigEntry // the revision rev
	err        error          // it could not be read
	poolsShown bool           // status shows its pools
	budgetNote string         // what could not be read of the budgets' counts
}

// readLatest reads the newest revision of the configuration bucket beside
// the health bucket; no bucket is no error. It reads only when a replica
// of fv follows a configuration bucket (tells a revision or a refusal): a
// fleet that runs each replica by its own settings has none to read, and
// its operators' permissions need not grant one.
func readLatest(ctx context.Context, js jetstream.JetStream, health string, fv fleetView) configLatest {
	l := configLatest{bucket: kv.ConfigBucket(health)}
	if !slices.ContainsFunc(fv.configs, func(c replica.ReplicaRevision) bool {
		return c.Revision != nil && (*c.Revision > 0 || c.Refused != "")
	}) {
		return l
	}
	ctx, cancel := context.WithTimeout(ctx, configWait)
	defer cancel()
	cs, err := kv.OpenConfig(ctx, js, l.bucket, false)
	if err == nil {
		var e kv.ConfigEntry
		e, err = cs.Latest(ctx)
		l.rev, l.entry = e.Revision, e
	}
	if err != nil && !errors.Is(err, kv.ErrNoBucket) {
		l.err = err
	}
	return l
}

// revisions marks the replicas heard against the newest revision read.
func (l configLatest) revisions(fv fleetView) replica.Revisions {
	return replica.MarkRevisions(fv.configs, l.bucket, l.rev)
}

// writeReplicas writes the section of the replicas and their revisions,
// under the routers' table; nothing when no replica was heard (the
// heading says so).
func writeReplicas(w io.Writer, f replica.Revisions, l configLatest) error {
	if len(f.Replicas) == 0 {
		return nil
	}
	summary := f.Summary()
	if summary == "" {
		summary = "no replica heard tells its revision (brokers from before replicas told it)"
	}
	fmt.Fprintf(w, "\nconfiguration: %s\n", safetext.Line(summary))
	if l.err != nil {
		fmt.Fprintf(w, "configuration bucket %s: its newest revision could not be read (%s), so the replicas are held to the highest any runs\n",
			l.bucket, safetext.Line(natsconn.OneLine(l.err.Error())))
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "REPLICA\tREVISION\tCONFIGURATION")
	for _, r := range f.Replicas {
		rev, state := "-", "told no revision (a broker from before replicas told it)"
		if r.Revision != nil {
			rev, state = fmt.Sprint(*r.Revision), "in step"
		}
		if r.Drift != "" {
			state = "DRIFT: " + r.Drift
		}
		// The name and the refusal are cut to safetext.MaxShown already.
		fmt.Fprintln(tw, strings.Join([]string{safetext.Line(r.ID), rev, safetext.Line(state)}, "\t"))
	}
	return tw.Flush()
}

// writeReplicasJSON writes the replicas heard as a JSON array for scripts
// (status --replicas --json).
func writeReplicasJSON(w io.Writer, f replica.Revisions) error {
	list := f.Replicas
	if list == nil {
		list = []replica.ReplicaRevision{}
	}
	doc, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return err
	}
	// Escaped as JSON, control and bidirectional characters a forged
	// word carries spoof no terminal the array is printed on.
	_, err = w.Write(append(safetext.JSON(doc), '\n'))
	return err
}
