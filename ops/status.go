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

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/safetext"
	"github.com/gecholog/broker/kv"
	"github.com/gecholog/broker/replica"
)

// StatusOptions are how `broker status` shows the pools.
type StatusOptions struct {
	// JSON prints a JSON array for scripts instead of the table.
	JSON bool
	// Watch redraws the table every WatchEvery until ctx ends, as watch(1)
	// would.
	Watch bool
	// Replicas lists the replicas heard and the revision of the fleet's
	// configuration each runs instead of the routers (which the table
	// lists them under anyway); with JSON, as a JSON array.
	Replicas bool
	// PolicyGiven says Policy was given (by flag or environment); else
	// the policy of the fleet's configuration, when the replicas follow
	// one, is what records are held to.
	PolicyGiven bool
	// Policy is the failure policy the replicas hold records to, from the
	// processor's own settings (DISABLED_TIME, BROKER_BACKOFF_CAP): a
	// record that reaches further is shown with the time the replicas act
	// on, marked as clamped. Zero fields take the policy's defaults.
	Policy broker.Policy
}

// Status prints every pool router's state as the replicas act on it, and
// every other record in the bucket, as a table or as a JSON array for
// scripts; with o.Watch, it redraws the table every second until ctx ends.
func Status(ctx context.Context, t Target, o StatusOptions, stdout io.Writer) error {
	if o.Policy.DisabledTime == 0 {
		o.Policy.DisabledTime = broker.DefaultDisabledTime
	}
	policy, err := o.Policy.Resolve()
	if err != nil {
		return err
	}
	if o.Watch {
		if o.JSON {
			return errors.New("status: --watch redraws the table; leave out --json, or run --json every second yourself")
		}
		return t.withNode("status", true, func(n node) error {
			return watch(ctx, t, policy, o, n, stdout)
		})
	}
	var v statusView
	err = t.withNode("status", false, func(n node) (err error) {
		f := hearFleet(n.nc, t.Bucket)
		defer f.stop()
		v, _, err = readStatus(ctx, t, policy, o.PolicyGiven, n, f)
		return err
	})
	if err != nil {
		return err
	}
	if err := printStatus(stdout, o, v); err != nil {
		return err
	}
	if v.stale != nil {
		return t.NATS.Scrub(fmt.Errorf("%w: %s does not answer through %s (%s); printed %s's copy, which may miss what the rest of the cluster wrote since",
			ErrStale, v.stale.Bucket, v.stale.Server, v.stale.Cause, v.stale.Node))
	}
	return nil
}

// statusView is what one `broker status` shows.
type statusView struct {
	head  string // the heading, ending in a blank line
	rows  []statusRow
	revs  replica.Revisions
	l     configLatest
	now   time.Time
	stale *staleNote // nil: the bucket answered
}

// printStatus prints v as o asks.
func printStatus(stdout io.Writer, o StatusOptions, v statusView) error {
	switch {
	case o.Replicas && o.JSON:
		return writeReplicasJSON(stdout, v.revs)
	case o.Replicas:
		fmt.Fprint(stdout, strings.TrimSuffix(v.head, "\n")) // writeReplicas opens with a blank line
		return writeReplicas(stdout, v.revs, v.l)
	}
	if o.JSON {
		doc, err := json.MarshalIndent(v.rows, "", "  ")
		if err != nil {
			return err
		}
		// Escaped as JSON, control and bidirectional characters from
		// the bucket spoof no terminal the array is printed on.
		_, err = stdout.Write(append(safetext.JSON(doc), '\n'))
		return err
	}
	fmt.Fprint(stdout, v.head)
	if err := writeTable(stdout, v.rows); err != nil {
		return err
	}
	if err := writeReplicas(stdout, v.revs, v.l); err != nil {
		return err
	}
	if err := writeSessions(stdout, v.rows, v.revs); err != nil {
		return err
	}
	return writeBudgets(stdout, v.rows, v.l.budgetNote, v.now)
}

// readStatus reads what status shows through the server n: the bucket,
// or, when the bucket does not answer there, n's own copy of it marked
// stale (readOrStale), with the replicas f hears once it has listened for
// them; stale says why the view is n's copy (nil: it is the bucket).
// Plain status and each frame of status --watch read it alike.
func readStatus(ctx context.Context, t Target, policy broker.Policy, policyGiven bool, n node, f *fleet) (v statusView, stale, err error) {
	err = t.readOrStale(ctx, n, "status", func(ctx context.Context, b bucket) error {
		v, err = readFresh(ctx, t, policy, policyGiven, b, f)
		return err
	}, func(ctx context.Context, n node, cause error) (err error) {
		stale = whyStale(ctx, t, n, cause)
		v, err = readStale(ctx, t, policy, n, f, stale)
		return err
	})
	return v, stale, err
}

// readFresh reads the view of the bucket b answered.
func readFresh(ctx context.Context, t Target, policy broker.Policy, policyGiven bool, b bucket, f *fleet) (statusView, error) {
	if err := f.listenOut(ctx); err != nil {
		return statusView{}, err
	}
	rows, fv, now, l, err := readRows(ctx, t, policy, policyGiven, b, f)
	if err != nil {
		return statusView{}, err
	}
	return statusView{head: heading(b, t, fv, l, now), rows: rows, revs: l.revisions(fv), l: l, now: now}, nil
}

// readRows reads the bucket and makes the status rows of it, with the
// fleet's figures as f heard them.
//
// The replicas run by the newest valid revision of the fleet's
// configuration when they follow one: its pools are shown, unless the
// command was given a pools file, and records are held to its policy,
// unless the command was given one.
func readRows(ctx context.Context, t Target, policy broker.Policy, policyGiven bool, b bucket, f *fleet) ([]statusRow, fleetView, time.Time, configLatest, error) {
	listed, err := b.store.Scan(ctx)
	if err != nil {
		return nil, fleetView{}, time.Time{}, configLatest{}, err
	}
	now := time.Now()
	fv := f.view(now)
	l := readLatest(ctx, b.js, t.Bucket, fv)
	pools := t.Pools
	if l.rev != 0 && l.entry.Err == nil {
		if p, pol, _, err := l.entry.Config.Settings(); err == nil {
			if t.PoolsFile == "" {
				pools, l.poolsShown = p, true
			}
			if r, err := pol.Resolve(); err == nil && !policyGiven {
				policy = r
			}
		}
	}
	rows := statusRows(pools, policy, listed, fv, now)
	l.budgetNote = readBudgets(ctx, b.js, t.Bucket, pools, rows, now)
	return rows, fv, now, l, nil
}

// statusRow is one line of `broker status`. Its JSON names are the
// interface for scripts: add fields, never rename them.
type statusRow struct {
	Ingress string `json:"ingress"`
	Router  string `json:"router"`
	// State is "enabled", "disabled", "probation" (the disable has ended
	// and one probe call decides), "budget" (healthy, and out until its
	// spent budget's period resets: see Budget), "unreadable" (replicas
	// ignore the record, so the router is in use) or "unknown router" (a
	// record no configured pool uses).
	State string `json:"state"`
	// Until is when the disable ends as every replica holds it to the
	// failure policy: RFC 3339; null: until enabled by hand, or enabled.
	Until       *string `json:"until"`
	LeftSeconds *int64  `json:"left_seconds"` // rounded up; null when Until is
	// Clamped says the record reaches further than the policy allows (an
	// automatic disable beyond the longest, or without an end), so the
	// replicas act on Until instead of the record's own time, which
	// RecordUntil gives (absent: the record has none).
	Clamped     bool    `json:"clamped,omitempty"`
	RecordUntil *string `json:"record_until,omitempty"`
	Reason      string  `json:"reason"`
	Status      *int    `json:"status"` // the status code that caused the disable
	By          string  `json:"by"`
	Manual      bool    `json:"manual"`
	// Level is the backoff level of an automatic disable.
	Level *int `json:"level"`
	// Probe names the replica holding a router's probe, while it holds it.
	Probe string `json:"probe,omitempty"`

	// Tier is the router's priority in its pool, lower first.
	Tier *int `json:"tier"`
	// The fleet's figures, added up from what every replica tells on the
	// stats subject; null when no replica was heard (or, for share,
	// latency, headroom and failure rate, while there is nothing to say).
	// InFlight is the calls chosen and not reported yet; Share the
	// router's share of its pool's recent choices (0 to 1); LatencyMS its
	// recent upstream time from the transaction log; Headroom the share of
	// its rate limit left (0 to 1); Calls its calls reported within the
	// failure-rate window, and FailureRate the share of those that failed.
	InFlight    *int64   `json:"in_flight"`
	Share       *float64 `json:"share"`
	LatencyMS   *float64 `json:"latency_ms"`
	Headroom    *float64 `json:"headroom"`
	Calls       *int64   `json:"calls"`
	FailureRate *float64 `json:"failure_rate"`
	// RateLimitedUntil is when a router its upstream said has no request
	// or token left takes calls again (RFC 3339); null when it is not
	// waiting for a reset.
	RateLimitedUntil *string `json:"rate_limited_until"`
	rateLimitLeft    *int64  // seconds to it, for the table
	// Affinity is the router's pool's session affinity (null: none); the
	// header's name, never a value. The session counts are per replica
	// (status --replicas --json).
	Affinity *replica.ExplainedAffinity `json:"affinity,omitempty"`
	// Sessions are, for a router of a pool with "session" affinity, the
	// sessions pinned to it (remembered, within their lifetime, with their
	// last call on it) and those heard moving in and out since the
	// replicas started: the largest any replica tells, as all hear the
	// same log; null for other pools or when no replica was heard.
	Sessions *replica.RouterSessionsTold `json:"sessions,omitempty"`
	// Budget is, for a router with a budget, each of its caps as the
	// bucket of budget counts has it (see BudgetCell); absent otherwise.
	Budget []BudgetCell `json:"budget,omitempty"`
	// PoolBudget is, for a row of a pool with a budget of its own, each
	// of its caps on the calls through the pool's ingress, as the bucket
	// has it; absent otherwise. A spent cap puts every router of the pool
	// that is enabled in state "budget".
	PoolBudget []BudgetCell `json:"pool_budget,omitempty"`
	// Stale is set, the same in every row, when the bucket did not answer
	// and the rows are one server's copy of it, which may miss what the
	// rest of the cluster wrote since (see staleNote); absent when the
	// bucket answered.
	Stale *staleNote `json:"stale,omitempty"`
}

// statusColumns are the table's columns: adding one is one line here.
var statusColumns = []struct {
	head string
	cell func(statusRow) string
}{
	{"INGRESS", func(r statusRow) string { return r.Ingress }},
	{"ROUTER", func(r statusRow) string { return safetext.Cut(r.Router, safetext.MaxShown) }},
	{"TIER", func(r statusRow) string { return numberCell(r.Tier) }},
	{"STATE", func(r statusRow) string {
		switch {
		case r.Manual:
			return r.State + " (manual)"
		case r.Probe != "":
			return r.State + " (probe: " + r.Probe + ")"
		case r.RateLimitedUntil != nil && r.State == "enabled":
			return r.State + " (rate-limited: waits for its reset)"
		}
		return r.State
	}},
	{"UNTIL", func(r statusRow) string {
		if r.Until == nil && r.State == "disabled" {
			return "until enabled by hand"
		}
		if r.Until == nil && r.RateLimitedUntil != nil {
			return *r.RateLimitedUntil
		}
		if r.Clamped {
			own := "none"
			if r.RecordUntil != nil {
				own = *r.RecordUntil
			}
			return stringCell(r.Until) + " clamped (record: " + own + ")"
		}
		return stringCell(r.Until)
	}},
	{"LEFT", func(r statusRow) string {
		if r.LeftSeconds == nil && r.rateLimitLeft != nil {
			return (time.Duration(*r.rateLimitLeft) * time.Second).String()
		}
		if r.LeftSeconds == nil {
			return ""
		}
		return (time.Duration(*r.LeftSeconds) * time.Second).String()
	}},
	{"IN-FLIGHT", func(r statusRow) string { return int64Cell(r.InFlight) }},
	{"SHARE", func(r statusRow) string { return percentCell(r.Share) }},
	{"LATENCY", func(r statusRow) string {
		if r.LatencyMS == nil {
			return ""
		}
		return (time.Duration(*r.LatencyMS * float64(time.Millisecond))).Round(time.Millisecond).String()
	}},
	{"HEADROOM", func(r statusRow) string { return percentCell(r.Headroom) }},
	{"CALLS", func(r statusRow) string { return int64Cell(r.Calls) }},
	{"FAILED", func(r statusRow) string { return percentCell(r.FailureRate) }},
	{"STATUS", func(r statusRow) string { return numberCell(r.Status) }},
	{"REASON", func(r statusRow) string { return r.Reason }},
	{"BY", func(r statusRow) string { return r.By }},
	{"LEVEL", func(r statusRow) string { return numberCell(r.Level) }},
	{"SESSIONS", func(r statusRow) string {
		if r.Sessions == nil {
			return ""
		}
		return fmt.Sprintf("%d pinned (moved in %d, out %d)", r.Sessions.Pinned, r.Sessions.MovedIn, r.Sessions.MovedOut)
	}},
}

// statusRows lists every router of every pool, in the pools' order, with
// its record held to policy as every replica holds it, then the records of
// routers no pool knows, in key order, so that nothing in the bucket is
// hidden.
func statusRows(pools []broker.Pool, policy broker.Policy, listed []kv.Listed, fv fleetView, now time.Time) []statusRow {
	records := map[string]kv.Listed{}
	for _, l := range listed {
		records[l.Router] = l
	}
	known := map[string]bool{}
	rows := []statusRow{}
	for _, p := range pools {
		for _, r := range p.Routers {
			known[r.Path] = true
			row := statusRow{Ingress: p.Ingress, Router: r.Path, State: "enabled", Tier: &r.Priority, Affinity: fv.affinity(p.Affinity)}
			fv.figures(&row, p, now, policy.MaxWait())
			if l, ok := records[r.Path]; ok {
				switch {
				case l.Err != nil:
					row.State = "unreadable"
					row.Reason = safetext.Cut("replicas ignore this record: "+l.Err.Error(), safetext.MaxShown)
				default:
					rec, clamped := policy.Clamp(l.Entry)
					switch broker.RecordPhase(rec, now) {
					case broker.Disabled, broker.Manual:
						row.State = "disabled"
						row.fill(rec, now)
					case broker.Probation:
						row.State = "probation"
						row.fill(rec, now)
						if p := rec.Probe; p != nil && now.Before(p.Until) {
							row.Probe = safetext.Cut(p.By, safetext.MaxShown)
						}
					}
					if clamped && row.State != "enabled" && !rec.Until.Equal(l.Entry.Record.Until) {
						row.Clamped = true
						if u := l.Entry.Record.Until; !u.IsZero() {
							own := u.UTC().Format(time.RFC3339)
							row.RecordUntil = &own
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
		switch {
		case errors.Is(l.Err, kv.ErrInvalidKey):
			row.State = "invalid key"
			row.Reason = "not a router: NATS's KV API refuses this key, and every replica ignores it; `broker enable` with the key removes it"
		case l.Err != nil:
			row.Reason = safetext.Cut("unreadable: "+l.Err.Error(), safetext.MaxShown)
		default:
			row.fill(l.Entry.Record, now)
		}
		rows = append(rows, row)
	}
	return rows
}

func (row *statusRow) fill(rec broker.Record, now time.Time) {
	// A record may say anything at any length; what is shown is bounded.
	row.Reason, row.By, row.Manual = safetext.Cut(rec.Reason, safetext.MaxShown), safetext.Cut(rec.By, safetext.MaxShown), rec.Manual
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
			cells[i] = safetext.Line(col.cell(r)) // the fields are cut to safetext.MaxShown already
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

func int64Cell(n *int64) string {
	if n == nil {
		return ""
	}
	return fmt.Sprint(*n)
}

// percentCell is a share from 0 to 1 as a whole percentage.
func percentCell(x *float64) string {
	if x == nil {
		return ""
	}
	return fmt.Sprintf("%.0f%%", *x*100)
}

func numberCell(n *int) string {
	if n == nil {
		return ""
	}
	return fmt.Sprint(*n)
}
