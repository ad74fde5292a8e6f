package broker

// Budgets: what a router may use per period, counted from gecholog's
// transaction log. Every replica hears every call of the fleet there, so
// every replica counts the same calls and takes a router out at the same
// call, with nothing told between them. A router whose budget is spent is
// out of its pools until the period resets, with the reason budget: not a
// failure, so no backoff and no probe; its tier spills over as with a
// disable, and a pool with every router out for budget follows its
// BudgetSpent rule.
//
// A call counts when its transaction is heard, after it ended, so the
// calls in flight are not in the counts yet: a router is out as soon as
// what it used and what its calls in flight will use (each at the
// router's average call so far) reach the budget, which keeps the
// overshoot to what those calls use beyond their average.

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Budget caps what a router may use per period; a zero field caps
// nothing. Minutes are the clock's; days and months are the calendar's in
// TimeZone.
type Budget struct {
	TokensPerMinute   int64
	RequestsPerMinute int64
	// SpendPerDay and SpendPerMonth are in the currency of the router's
	// price, which they need.
	SpendPerDay, SpendPerMonth float64
	// TimeZone is an IANA time zone name ("Europe/Stockholm") where a day
	// and a month begin; "" is UTC.
	TimeZone string
}

// On reports whether g caps anything.
func (g Budget) On() bool {
	return g.TokensPerMinute > 0 || g.RequestsPerMinute > 0 || g.SpendPerDay > 0 || g.SpendPerMonth > 0
}

// MaxBudgetCount bounds a token or request budget: 2^53, what every
// replica counts exactly.
const MaxBudgetCount = 1 << 53

// validate says what is wrong with g, naming the fields as the pools file
// does; priced says the router has a price.
func (g Budget) validate(priced bool) error {
	for _, f := range []struct {
		name string
		v    int64
	}{{"tokens_per_minute", g.TokensPerMinute}, {"requests_per_minute", g.RequestsPerMinute}} {
		if f.v < 0 || f.v > MaxBudgetCount {
			return fmt.Errorf("budget.%s %d: give a whole number from 1 to 2^53, or leave it out", f.name, f.v)
		}
	}
	for _, f := range []struct {
		name string
		v    float64
	}{{"spend_per_day", g.SpendPerDay}, {"spend_per_month", g.SpendPerMonth}} {
		switch {
		case math.IsNaN(f.v) || math.IsInf(f.v, 0) || f.v < 0 || f.v > MaxBudgetCount:
			return fmt.Errorf("budget.%s %v: give an amount above 0 in the price's currency, or leave it out", f.name, f.v)
		case f.v > 0 && !priced:
			return fmt.Errorf(`budget.%s: the router has no price, so its spend is not known; give it one, per million tokens: "price": {"input": 2.5, "output": 10}`, f.name)
		}
	}
	if !g.On() {
		return errors.New("budget: caps nothing; give tokens_per_minute, requests_per_minute, spend_per_day or spend_per_month, or leave the budget out")
	}
	if _, err := g.location(); err != nil {
		return err
	}
	return nil
}

// location is where g's days and months begin.
func (g Budget) location() (*time.Location, error) {
	if g.TimeZone == "" {
		return time.UTC, nil
	}
	loc, err := time.LoadLocation(g.TimeZone)
	if err != nil || g.TimeZone == "Local" {
		return nil, fmt.Errorf("budget.time_zone %q: not a time zone; give an IANA name such as \"Europe/Stockholm\", or leave it out for UTC", g.TimeZone)
	}
	return loc, nil
}

// BudgetKind is one cap of a Budget.
type BudgetKind int

const (
	TokensPerMinute BudgetKind = iota
	RequestsPerMinute
	SpendPerDay
	SpendPerMonth
	budgetKinds
)

// String is the kind as the pools file and the metrics name it.
func (k BudgetKind) String() string {
	return [...]string{"tokens_per_minute", "requests_per_minute", "spend_per_day", "spend_per_month"}[k]
}

// limit is g's cap of kind k; 0: none.
func (g Budget) limit(k BudgetKind) float64 {
	return [...]float64{float64(g.TokensPerMinute), float64(g.RequestsPerMinute), g.SpendPerDay, g.SpendPerMonth}[k]
}

// periods of a budget: a minute, a day, a month.
type period int

const (
	minute period = iota
	day
	month
	periods
)

func (k BudgetKind) period() period { return [...]period{minute, minute, day, month}[k] }

// bounds returns the start and end of the period of p holding now, in loc.
func (p period) bounds(now time.Time, loc *time.Location) (start, end time.Time) {
	switch p {
	case minute:
		start = now.Truncate(time.Minute)
		return start, start.Add(time.Minute)
	case day:
		y, m, d := now.In(loc).Date()
		start = time.Date(y, m, d, 0, 0, 0, 0, loc)
		return start, time.Date(y, m, d+1, 0, 0, 0, 0, loc)
	}
	y, m, _ := now.In(loc).Date()
	return time.Date(y, m, 1, 0, 0, 0, 0, loc), time.Date(y, m+1, 1, 0, 0, 0, 0, loc)
}

// Used is what a router used in one period.
type Used struct {
	// Start is when the period began (zero: nothing counted in it yet).
	Start    time.Time
	Tokens   int64
	Requests int64
	Spend    float64
}

// budgetUse is a router's use in its current periods, from the calls
// heard on the transaction log.
type budgetUse struct {
	mu   sync.Mutex
	used [periods]Used
}

// add counts a call heard at now, in loc's calendar.
func (u *budgetUse) add(now time.Time, loc *time.Location, tokens int64, spend float64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for p := range periods {
		start, _ := p.bounds(now, loc)
		c := &u.used[p]
		if !c.Start.Equal(start) {
			if c.Start.After(start) {
				continue // a call heard late, of a period already over here
			}
			*c = Used{Start: start}
		}
		c.Tokens += tokens
		c.Requests++
		c.Spend += spend
	}
}

// in returns what was used in the period of p holding now; nothing when
// no call of it was counted.
func (u *budgetUse) in(p period, now time.Time, loc *time.Location) Used {
	start, _ := p.bounds(now, loc)
	u.mu.Lock()
	defer u.mu.Unlock()
	if c := u.used[p]; c.Start.Equal(start) {
		return c
	}
	return Used{Start: start}
}

// budgetConfig is a budget as the pools in force give it.
type budgetConfig struct {
	Budget
	loc *time.Location
}

// budgetState is a budget and what it counted: a router's or a pool's.
type budgetState struct {
	// budget is the budget in the pools in force, nil: none given; use
	// what was used in its periods, and spent what keeps its holder out,
	// as the snapshots of its pools have it (nil, or a zero until:
	// nothing).
	budget atomic.Pointer[budgetConfig]
	use    budgetUse
	spent  atomic.Pointer[spent]
	told   int64 // the spentUntil last logged; Broker.mu
}

// spent is when a spent budget stops keeping its holder out, and why it
// does; zero until when it does not.
type spent struct {
	until time.Time
	kind  BudgetKind
	used  float64 // what was counted of kind in its period
	limit float64
}

// spentAt says whether rt's budget keeps it out at now (see
// budgetState.spentAt), its calls in flight at its average call so far.
func (rt *route) spentAt(now time.Time) spent {
	return rt.budgetState.spentAt(now, float64(rt.stats.inFlight()), rt.stats.use.snapshot())
}

// spentAt says whether s's budget keeps its holder out at now: of every
// cap, what was used in the cap's period, plus the inFlight calls at the
// average call of calls so far, against the cap. Of several caps spent,
// the one that ends last is said.
func (s *budgetState) spentAt(now time.Time, inFlight float64, calls UsageCounts) spent {
	g := s.budget.Load()
	if g == nil {
		return spent{}
	}
	var perCallTokens, perCallSpend float64
	if calls.Counted > 0 {
		perCallTokens = float64(calls.Input+calls.Output+calls.CachedInput) / float64(calls.Counted)
		perCallSpend = calls.Spend / float64(calls.Counted)
	}
	var out spent
	var used [periods]Used
	var read [periods]bool
	for k := range budgetKinds {
		limit := g.limit(k)
		if limit <= 0 {
			continue
		}
		p := k.period()
		if !read[p] {
			used[p], read[p] = s.use.in(p, now, g.loc), true
		}
		var counted, coming float64
		switch k {
		case TokensPerMinute:
			counted, coming = float64(used[p].Tokens), inFlight*perCallTokens
		case RequestsPerMinute:
			counted, coming = float64(used[p].Requests), inFlight
		default:
			counted, coming = used[p].Spend, inFlight*perCallSpend
		}
		if counted+coming < limit {
			continue
		}
		if _, end := p.bounds(now, g.loc); end.After(out.until) {
			out = spent{until: end, kind: k, used: counted, limit: limit}
		}
	}
	return out
}

// why says in one line why the budget keeps a router out.
func (s spent) why(loc *time.Location) string {
	amount := func(x float64) string {
		if s.kind == SpendPerDay || s.kind == SpendPerMonth {
			return money(x)
		}
		return strconv.FormatFloat(x, 'f', 0, 64)
	}
	what := fmt.Sprintf("%s of %s used", amount(s.used), amount(s.limit))
	if s.used < s.limit {
		what = fmt.Sprintf("%s of %s used, the rest taken by the calls in flight", amount(s.used), amount(s.limit))
	}
	return fmt.Sprintf("budget %s spent (%s); back at %s", s.kind, what, s.until.In(loc).Format("2006-01-02 15:04:05 MST"))
}

// untilNs is s.until in unix nanoseconds; 0 when s keeps nothing out.
func (s *spent) untilNs() int64 {
	if s == nil || s.until.IsZero() {
		return 0
	}
	return s.until.UnixNano()
}

// spentUntil is when a spent budget lets its holder back in, in unix
// nanoseconds; 0 when it keeps it not out.
func (s *budgetState) spentUntil() int64 { return s.spent.Load().untilNs() }

// checkBudget takes rt out of its pools when its budget is spent at now,
// and back in when the period that spent it is over.
func (b *Broker) checkBudget(rt *route, now time.Time) {
	if rt.budget.Load() == nil && rt.spentUntil() == 0 {
		return
	}
	b.recheck(&rt.budgetState, rt.spentAt(now), now, rt.pools, slog.String("router", rt.path), "router")
}

// recheck makes s what keeps its holder, a router or a pool (who names
// it in the logs), out, and rebuilds pools when that changes: out, or
// back in.
func (b *Broker) recheck(bs *budgetState, s spent, now time.Time, pools []*pool, who slog.Attr, what string) {
	until := s.untilNs()
	if old := bs.spent.Load(); until == old.untilNs() {
		if until != 0 && *old != s {
			bs.spent.Store(new(s)) // the same period, counted further
		}
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	was := bs.spent.Swap(new(s)).untilNs()
	if was == until {
		return // another check got here first
	}
	for _, p := range pools {
		b.rebuild(p, now)
	}
	// Near a cap, a router or pool can go out on its calls in flight and
	// back in when they used less than their average: said once per
	// period.
	switch {
	case until != 0 && bs.told != until:
		bs.told = until
		loc := time.UTC
		if g := bs.budget.Load(); g != nil {
			loc = g.loc
		}
		b.log.Warn(what+" out for its budget", who, slog.String("budget", s.kind.String()),
			slog.String("why", s.why(loc)), slog.Time("back_at", s.until))
	case until == 0 && now.UnixNano() >= was:
		b.log.Info(what+" back from its budget", who, slog.String("why", "its period reset"))
	}
}

// countBudget counts a call of rt heard at now, of tokens that cost spend,
// in rt's budget's periods, and takes rt out when that spends it.
func (b *Broker) countBudget(rt *route, now time.Time, tokens int64, spend float64) {
	g := rt.budget.Load()
	if g == nil {
		return
	}
	rt.use.add(now, g.loc, tokens, spend)
	b.checkBudget(rt, now)
}
