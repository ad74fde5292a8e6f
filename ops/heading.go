package ops

import (
	"fmt"
	"strings"
	"time"

	"github.com/gecholog/broker/internal/safetext"
	"github.com/gecholog/broker/replica"
)

// heading is what `broker status` prints above its table: the bucket
// and its mode, where the pools come from, the replicas heard (a stale one
// marked with its cause) and whether the transaction log a pool needs is
// heard.
func heading(b bucket, t Target, fv fleetView, l configLatest, now time.Time) string {
	var h strings.Builder
	fmt.Fprintf(&h, "bucket %s on %s, %s mode (%s), at %s\n",
		b.store.Bucket(), b.server, b.store.Mode(), modeNote(b.store.Mode()), now.UTC().Format(time.RFC3339))
	if l.poolsShown {
		fmt.Fprintf(&h, "pools: revision %d of the fleet's configuration (%s), which the replicas run\n", l.rev, l.bucket)
	}
	writeFleetHeading(&h, t, fv, now)
	return h.String()
}

// writeFleetHeading writes the heading's lines on the replicas heard and
// the transaction log, and the blank line under the heading.
func writeFleetHeading(h *strings.Builder, t Target, fv fleetView, now time.Time) {
	subject := replica.StatsSubject(t.Bucket)
	if len(fv.replicas) == 0 {
		fmt.Fprintf(h, "replicas: none heard on %s within %v, so no in-flight, share, latency, headroom or failure figures (no replica running, or this user may not subscribe there)\n", subject, fleetListen)
	} else {
		names := make([]string, len(fv.replicas))
		for i, r := range fv.replicas {
			names[i] = safetext.Clip(r, safetext.MaxShown) // a name anyone may publish on the stats subject
			if why := fv.stale[r]; why != "" {
				names[i] += " (STALE: " + safetext.Clip(why, safetext.MaxShown) + ")"
			}
		}
		fmt.Fprintf(h, "replicas: %d heard on %s (%s)\n", len(fv.replicas), subject, strings.Join(names, ", "))
	}
	var needs []string
	for _, p := range t.Pools {
		if p.NeedsTransactionLog() {
			needs = append(needs, p.Ingress+" ("+p.StrategyName()+")")
		}
	}
	if len(needs) > 0 && len(fv.replicas) > 0 {
		switch age := now.Sub(fv.logHeard); {
		case fv.logHeard.IsZero():
			fmt.Fprintf(h, "transaction log: never heard, so %s choose at random: set gecholog's service_bus.topic_exact_logger and BROKER_LOGGER_SUBJECT alike\n", strings.Join(needs, ", "))
		case age > replica.DefaultLoggerSilence:
			fmt.Fprintf(h, "transaction log: silent for %v, so %s choose at random\n", age.Round(time.Second), strings.Join(needs, ", "))
		default:
			fmt.Fprintf(h, "transaction log: last heard %v ago\n", age.Round(time.Millisecond))
		}
	}
	h.WriteString("\n")
}
