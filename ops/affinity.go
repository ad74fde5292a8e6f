package ops

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/safetext"
	"github.com/gecholog/broker/replica"
)

// affinityLine says in one line how a pool keeps a conversation on one
// router, and that the rest of explain is for the calls without a key.
// It names the header, never a value.
func affinityLine(a replica.ExplainedAffinity) string {
	by := "header " + a.Header
	if a.Session {
		by = "gecholog's session header " + a.Header + " (its first three parts)"
	}
	memory := ""
	if a.Session {
		memory = fmt.Sprintf(", sessions remembered %s after their last call (ttl)", time.Duration(a.TTLSeconds*float64(time.Second)))
		if a.Stay {
			memory += ", a session that moved stays where it moved (stay)"
		} else {
			memory += ", a session that moved goes back to its first router when that one can take it"
		}
	}
	return fmt.Sprintf("Session affinity on %s, load factor %s%s: a keyed call goes to its session's router (the next in its order when that one is over its bound); this shows the choice for calls without a key",
		by, strconv.FormatFloat(a.LoadFactor, 'g', -1, 64), memory)
}

// affinity is a pool's affinity a as status shows it; nil when a is off.
// A "session" pool reads the replicas' session header, which they tell;
// "" while none was heard.
func (v fleetView) affinity(a broker.Affinity) *replica.ExplainedAffinity {
	if !a.On() {
		return nil
	}
	header := ""
	if a.Session {
		for _, r := range v.configs { // in any order: the replicas of a fleet read one header
			if s := r.Sessions; s != nil && s.Header != "" {
				header = s.Header
				break
			}
		}
	}
	return replica.ExplainAffinity(a, header)
}

// writeSessions writes the section of session affinity under the
// replicas': each pool's affinity, and each replica's calls of those
// pools by what became of their key; nothing when no pool has affinity.
// The sessions pinned per router, and their moves, are in the table
// (statusColumns: SESSIONS).
func writeSessions(w io.Writer, rows []statusRow, f replica.Revisions) error {
	var pools []string
	for i, r := range rows {
		if r.Affinity == nil || i > 0 && rows[i-1].Ingress == r.Ingress {
			continue
		}
		by := "header " + r.Affinity.Header
		switch {
		case r.Affinity.Session && r.Affinity.Header == "":
			by = "gecholog's session header (no replica heard tells its name)"
		case r.Affinity.Session:
			by = "gecholog's session header " + r.Affinity.Header
		}
		pools = append(pools, fmt.Sprintf("%s by %s, load factor %s", r.Ingress, by, strconv.FormatFloat(r.Affinity.LoadFactor, 'g', -1, 64)))
	}
	if len(pools) == 0 {
		return nil
	}
	fmt.Fprintf(w, "\nsession affinity: %s\n", safetext.Line(strings.Join(pools, "; ")))
	var sum replica.SessionsTold
	var told []replica.ReplicaRevision
	for _, r := range f.Replicas {
		if s := r.Sessions; s != nil {
			told = append(told, r)
			sum.Keyed, sum.Spilled, sum.NoKey = add(sum.Keyed, s.Keyed), add(sum.Spilled, s.Spilled), add(sum.NoKey, s.NoKey)
		}
	}
	if len(told) == 0 {
		fmt.Fprintln(w, "sessions: no replica heard tells its counts (none running, or brokers from before replicas told them)")
		return nil
	}
	fmt.Fprintf(w, "sessions since each replica started: %d keyed (%d of them spilled to the next router in their order), %d without a key, over %s\n",
		sum.Keyed, sum.Spilled, sum.NoKey, plural(len(told), "replica"))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "REPLICA\tKEYED\tSPILLED\tNO-KEY")
	for _, r := range told {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\n", safetext.Line(r.ID), r.Sessions.Keyed, r.Sessions.Spilled, r.Sessions.NoKey)
	}
	return tw.Flush()
}

// add is a+b, or the largest count when that would wrap: anyone who may
// publish on the stats subject can tell any count.
func add(a, b uint64) uint64 {
	if a+b < a {
		return ^uint64(0)
	}
	return a + b
}

// sessionLine says where the session explain was asked about goes.
func sessionLine(s replica.ExplainedSession) string {
	switch {
	case s.NoKey == "no affinity":
		return "The session asked: this pool has no affinity, so every call goes by the strategy"
	case s.NoKey != "":
		return "The session asked: its value gives no key (" + s.NoKey + "), so its calls go by the strategy, as below"
	case s.Router == "":
		return "The session asked: no router is enabled, so the all-disabled rule answers, as below"
	case s.Remembered:
		return "The session asked: its next call goes to " + s.Router + ", where gecholog's transaction log says the session goes back to (remembered)"
	case s.Home != "" && s.Spilled:
		return "The session asked: its next call goes to " + s.Router + ", the next in its order: " + s.Home + ", where the log says it goes back to, cannot take it (out, over its bound, or no rate limit left), and nor can its first"
	case s.Home != "":
		return "The session asked: its next call goes to " + s.Router + ", by its order: " + s.Home + ", where the log says it goes back to, cannot take it (out, over its bound, or no rate limit left)"
	case s.Spilled:
		return "The session asked: its next call goes to " + s.Router + ", the next in its order (its first is over its bound, or has no rate limit left)"
	}
	return "The session asked: its next call goes to " + s.Router + ", its session's router by its order"
}
