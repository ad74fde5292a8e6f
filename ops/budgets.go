package ops

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/safetext"
	"github.com/gecholog/broker/kv"
)

// BudgetCell is one cap of a router's budget in `broker status --json`,
// from the bucket of budget counts (kv.UsageStore): what the fleet's
// replicas counted. Its JSON names are an interface: add fields, never
// rename them.
type BudgetCell struct {
	Budget string  `json:"budget"` // tokens_per_minute, requests_per_minute, spend_per_day, spend_per_month
	Limit  float64 `json:"limit"`
	Used   float64 `json:"used"`
	// Resets is when the period ends (RFC 3339), and Spent says the count
	// has reached the cap: the router is out until then.
	Resets string `json:"resets"`
	Spent  bool   `json:"spent"`
}

// readBudgets fills in the budget of each row whose router has one in
// pools, and the pool budget of each row whose pool has one, from the
// bucket of budget counts. A bucket not made yet (no replica has counted
// a budget's call) counts nothing; one that cannot be read is said in the
// returned note.
func readBudgets(ctx context.Context, js jetstream.JetStream, bucket string, pools []broker.Pool, rows []statusRow, now time.Time) (note string) {
	budgets := map[string]*broker.Budget{} // by key (kv.UsageKey)
	for _, p := range pools {
		if p.Budget != nil {
			budgets[kv.UsageKey(broker.BudgetCount{Pool: p.Ingress})] = p.Budget
		}
		for _, r := range p.Routers {
			if r.Budget != nil {
				budgets[r.Path] = r.Budget
			}
		}
	}
	if len(budgets) == 0 {
		return ""
	}
	name := kv.UsageBucket(bucket)
	store, err := kv.ReadUsage(ctx, js, name)
	if err != nil && !errors.Is(err, kv.ErrNoBucket) {
		return "cannot read bucket " + name + ": " + err.Error()
	}
	counts := map[string]broker.BudgetCount{}
	for key := range budgets {
		if store == nil {
			break
		}
		c, _, err := store.GetUsage(ctx, key)
		if err != nil {
			note = "cannot read " + key + "'s count in bucket " + name + ": " + err.Error()
			continue
		}
		counts[key] = c
	}
	cells := func(key string) (out []BudgetCell, spent bool) {
		g := budgets[key]
		if g == nil {
			return nil, false
		}
		out = []BudgetCell{}
		for _, k := range g.Kinds() {
			used, resets := g.Usage(counts[key], k, now)
			out = append(out, BudgetCell{Budget: k.String(), Limit: g.Limit(k), Used: used,
				Resets: resets.UTC().Format(time.RFC3339), Spent: used >= g.Limit(k)})
			spent = spent || used >= g.Limit(k)
		}
		return out, spent
	}
	for i := range rows {
		r := &rows[i]
		var spent, poolSpent bool
		r.Budget, spent = cells(r.Router)
		r.PoolBudget, poolSpent = cells(kv.UsageKey(broker.BudgetCount{Pool: r.Ingress}))
		if (spent || poolSpent) && r.State == "enabled" {
			r.State = "budget" // healthy, and out until the period resets
		}
	}
	return note
}

// writeBudgets lists the routers' and pools' budgets after the table,
// once per router or pool: what the fleet used of each cap, and when its
// period resets.
func writeBudgets(w io.Writer, rows []statusRow, note string, now time.Time) error {
	seen := map[string]bool{}
	var lines [][]string
	for _, r := range rows {
		for _, b := range []struct {
			who   string
			cells []BudgetCell
		}{{r.Router, r.Budget}, {"pool " + r.Ingress, r.PoolBudget}} {
			if b.cells != nil && !seen[b.who] {
				seen[b.who] = true
				lines = append(lines, budgetLines(b.who, b.cells, now)...)
			}
		}
	}
	if len(lines) == 0 && note == "" {
		return nil
	}
	fmt.Fprintln(w, "\nbudgets, as the replicas counted them:")
	if note != "" {
		fmt.Fprintln(w, safetext.Line(note))
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ROUTER OR POOL\tBUDGET\tUSED\tLIMIT\tRESETS\tSTATE")
	for _, l := range lines {
		for i := range l {
			l[i] = safetext.Line(l[i])
		}
		fmt.Fprintln(tw, strings.Join(l, "\t"))
	}
	return tw.Flush()
}

// budgetLines are the lines of the budget of who (a router, or "pool "
// and an ingress) in writeBudgets' table.
func budgetLines(who string, cells []BudgetCell, now time.Time) (lines [][]string) {
	for _, c := range cells {
		amount := func(x float64) string { return strconv.FormatFloat(x, 'f', -1, 64) }
		if strings.HasPrefix(c.Budget, "spend") {
			amount = func(x float64) string { return strconv.FormatFloat(x, 'f', 4, 64) }
		}
		state := "ok"
		if c.Spent {
			state = "spent: out until it resets"
		}
		resets, _ := time.Parse(time.RFC3339, c.Resets)
		lines = append(lines, []string{who, c.Budget, amount(c.Used), amount(c.Limit),
			c.Resets + " (in " + resets.Sub(now).Round(time.Second).String() + ")", state})
	}
	return lines
}
