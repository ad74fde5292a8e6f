package ops

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/kv"
)

// Status prints every pool router's state, and every other record in the
// bucket, as a table or, with asJSON, as a JSON array for scripts.
func Status(ctx context.Context, t Target, asJSON bool, stdout io.Writer) error {
	return t.withBucket(ctx, "status", func(ctx context.Context, b bucket) error {
		listed, err := b.store.Scan(ctx)
		if err != nil {
			return err
		}
		now := time.Now()
		rows := statusRows(t.Pools, listed, now)
		if asJSON {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(rows)
		}
		fmt.Fprintf(stdout, "bucket %s on %s, %s mode (%s), at %s\n\n",
			b.store.Bucket(), b.server, b.store.Mode(), modeNote(b.store.Mode()), now.UTC().Format(time.RFC3339))
		return writeTable(stdout, rows)
	})
}

// statusRow is one line of `broker status`. Its JSON names are the
// interface for scripts: add fields, never rename them.
type statusRow struct {
	Ingress string `json:"ingress"`
	Router  string `json:"router"`
	// State is "enabled", "disabled", "probation" (the disable has ended
	// and one probe call decides), "unreadable" (replicas ignore the
	// record, so the router is in use) or "unknown router" (a record no
	// configured pool uses).
	State       string  `json:"state"`
	Until       *string `json:"until"`        // RFC 3339; null: until enabled by hand, or enabled
	LeftSeconds *int64  `json:"left_seconds"` // rounded up; null when Until is
	Reason      string  `json:"reason"`
	Status      *int    `json:"status"` // the status code that caused the disable
	By          string  `json:"by"`
	Manual      bool    `json:"manual"`
	// Level is the backoff level of an automatic disable.
	Level *int `json:"level"`
	// Probe names the replica holding a router's probe, while it holds it.
	Probe string `json:"probe,omitempty"`
}

// statusColumns are the table's columns: adding one is one line here.
var statusColumns = []struct {
	head string
	cell func(statusRow) string
}{
	{"INGRESS", func(r statusRow) string { return r.Ingress }},
	{"ROUTER", func(r statusRow) string { return r.Router }},
	{"STATE", func(r statusRow) string {
		switch {
		case r.Manual:
			return r.State + " (manual)"
		case r.Probe != "":
			return r.State + " (probe: " + r.Probe + ")"
		}
		return r.State
	}},
	{"UNTIL", func(r statusRow) string {
		if r.Until == nil && r.State == "disabled" {
			return "until enabled by hand"
		}
		return stringCell(r.Until)
	}},
	{"LEFT", func(r statusRow) string {
		if r.LeftSeconds == nil {
			return ""
		}
		return (time.Duration(*r.LeftSeconds) * time.Second).String()
	}},
	{"STATUS", func(r statusRow) string { return numberCell(r.Status) }},
	{"REASON", func(r statusRow) string { return r.Reason }},
	{"BY", func(r statusRow) string { return r.By }},
	{"LEVEL", func(r statusRow) string { return numberCell(r.Level) }},
}

// statusRows lists every router of every pool, in the pools' order, then
// the records of routers no pool knows, in key order, so that nothing in
// the bucket is hidden.
func statusRows(pools []broker.Pool, listed []kv.Listed, now time.Time) []statusRow {
	records := map[string]kv.Listed{}
	for _, l := range listed {
		records[l.Router] = l
	}
	known := map[string]bool{}
	rows := []statusRow{}
	for _, p := range pools {
		for _, r := range p.Routers {
			known[r.Path] = true
			row := statusRow{Ingress: p.Ingress, Router: r.Path, State: "enabled"}
			if l, ok := records[r.Path]; ok {
				switch {
				case l.Err != nil:
					row.State = "unreadable"
					row.Reason = "replicas ignore this record: " + l.Err.Error()
				default:
					switch broker.RecordPhase(l.Entry.Record, now) {
					case broker.Disabled, broker.Manual:
						row.State = "disabled"
						row.fill(l.Entry.Record, now)
					case broker.Probation:
						row.State = "probation"
						row.fill(l.Entry.Record, now)
						if p := l.Entry.Record.Probe; p != nil && now.Before(p.Until) {
							row.Probe = p.By
						}
					}
					// An ended manual record is enabled already; its key goes soon.
				}
			}
			rows = append(rows, row)
		}
	}
	listed = slices.SortedFunc(slices.Values(listed), func(a, b kv.Listed) int { return strings.Compare(a.Router, b.Router) })
	for _, l := range listed {
		if known[l.Router] {
			continue
		}
		row := statusRow{Router: l.Router, State: "unknown router"}
		if l.Err != nil {
			row.Reason = "unreadable: " + l.Err.Error()
		} else {
			row.fill(l.Entry.Record, now)
		}
		rows = append(rows, row)
	}
	return rows
}

func (row *statusRow) fill(rec broker.Record, now time.Time) {
	row.Reason, row.By, row.Manual = rec.Reason, rec.By, rec.Manual
	if rec.Status != 0 {
		row.Status = &rec.Status
	}
	if !rec.Manual {
		row.Level = &rec.Level
	}
	if !rec.Until.IsZero() {
		until := rec.Until.UTC().Format(time.RFC3339)
		left := int64(max(0, (rec.Until.Sub(now)+time.Second-1)/time.Second))
		row.Until, row.LeftSeconds = &until, &left
	}
}

func writeTable(w io.Writer, rows []statusRow) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	cells := make([]string, len(statusColumns))
	for i, col := range statusColumns {
		cells[i] = col.head
	}
	fmt.Fprintln(tw, strings.Join(cells, "\t"))
	for _, r := range rows {
		for i, col := range statusColumns {
			cells[i] = natsconn.OneLine(col.cell(r))
			if cells[i] == "" {
				cells[i] = "-"
			}
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

func modeNote(m kv.Mode) string {
	if m == kv.ModeTTL {
		return "the server expires disables"
	}
	return "no per-key TTL on this server: replicas enforce until and delete ended records"
}

func stringCell(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func numberCell(n *int) string {
	if n == nil {
		return ""
	}
	return fmt.Sprint(*n)
}
