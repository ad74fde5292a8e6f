package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/standin"
)

// budgetMode measures how far a fleet-wide token budget is overshot: a
// tier-0 router with a budget of tokens per minute, a tier-1 router
// without, calls at a steady rate spread over the replicas by the queue
// group, each call's usage known only from its transaction (as gecholog
// logs it after the call). The bench counts the tokens each call used
// from the answers it gave, so the overshoot is measured outside the
// broker. The run fits in one calendar minute, the budget's period: it
// waits for the next minute when too little of this one is left.
func (b *bench) budgetMode(ctx context.Context) error {
	o := b.o
	rate := float64(o.load)
	if rate == 0 {
		rate = 200
	}
	// The run and the time to start it within one minute.
	d := min(o.duration, 40*time.Second)
	// Half the tokens the run's calls use (1,080 a call on average): the
	// budget is reached midway.
	budget := int64(rate*d.Seconds()*1080/2/1000) * 1000
	p := pool("budget", "", "ptu", "payg")
	p.Routers[1].Priority = 1
	// The other caps never bind: they make the replicas count the day and
	// the month too, which the restart compares.
	p.Routers[0].Price = &broker.Price{Input: 2, Output: 8}
	p.Routers[0].Budget = &broker.Budget{TokensPerMinute: budget, RequestsPerMinute: 1e9, SpendPerDay: 1e9, SpendPerMonth: 1e9}
	llms := bySpeed(map[string]time.Duration{"ptu": 50 * time.Millisecond, "payg": 50 * time.Millisecond}, 0.3, p)
	if left := time.Until(time.Now().Truncate(time.Minute).Add(time.Minute)); left < d+5*time.Second {
		fmt.Fprintf(b.out, "waiting %v for the next minute, the budget's period, to begin\n", left.Round(time.Second))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(left + 200*time.Millisecond):
		}
	}
	var l *lab
	var err error
	if o.inProcess {
		l, err = b.startLab(ctx, []broker.Pool{p}, llms, 0)
	} else {
		l, err = b.startProcLab(ctx, []broker.Pool{p}, llms, labCallers)
	}
	if err != nil {
		return err
	}
	defer l.close()
	ptu := p.Routers[0].Path
	var mu sync.Mutex
	var ptuTokens, ptuCalls int64
	var ptuSpend float64
	var reached time.Time // when the calls answered on the PTU passed the budget
	answer := func(res standin.Result) json.RawMessage {
		in, out := 500+rand.IntN(1001), 40+rand.IntN(81)
		if res.Router == ptu && res.Status == 200 {
			mu.Lock()
			ptuTokens += int64(in + out)
			ptuSpend += p.Routers[0].Price.Cost(broker.Usage{Input: int64(in), Output: int64(out)})
			ptuCalls++
			if ptuTokens >= budget && reached.IsZero() {
				reached = time.Now()
			}
			mu.Unlock()
		}
		return fmt.Appendf(nil, `{"object":"chat.completion","choices":[{"message":{"content":"ok"}}],"usage":{"prompt_tokens":%d,"completion_tokens":%d}}`, in, out)
	}
	l.gw.Answer = answer
	if l.p != nil {
		l.p.answer(answer)
	}
	fmt.Fprintf(b.out, "%d replicas; pool %s: %s on tier 0 with a budget of %d tokens a minute, %s on tier 1; both answer in 50 ms (±30%%).\n"+
		"%.0f calls/s at random arrivals for %v, spread over the replicas by the queue group; each call's prompt is 500-1500\n"+
		"tokens and its answer 40-120, which the broker learns only from its transaction, after the call; the budget is\n"+
		"half what the run's calls use.\n\n",
		o.replicas, p.Ingress, ptu, budget, p.Routers[1].Path, rate, d)
	start := time.Now()
	logs := map[string]*callLog{p.Ingress: {}}
	late := l.drive(ctx, d, map[string]float64{p.Ingress: rate}, logs)
	if ctx.Err() != nil {
		return nil
	}
	mu.Lock()
	defer mu.Unlock()
	done := logs[p.Ingress].calls()
	n := byRouter(done, 0)
	if time.Now().Truncate(time.Minute) != start.Truncate(time.Minute) {
		fmt.Fprintln(b.out, "note: the run crossed a minute's end, where the budget's count starts again; the figures below are not one period's")
	}
	over := float64(ptuTokens-budget) / float64(budget)
	fmt.Fprintf(b.out, "calls %d (errors %d, late starts %d): %s %d, %s %d\n", len(done), logs[p.Ingress].errors, late, ptu, n[ptu], p.Routers[1].Path, n[p.Routers[1].Path])
	if reached.IsZero() {
		fmt.Fprintf(b.out, "the PTU used %d tokens, under its budget: raise -load or -duration\n", ptuTokens)
		return nil
	}
	fmt.Fprintf(b.out, "the PTU used %d tokens in %d calls against its budget of %d: overshoot %.2f%% (target ≤ 2%%: %s);\n"+
		"the budget was reached %v into the run.\n", ptuTokens, ptuCalls, budget, 100*over, targetVerdict(over <= 0.02), reached.Sub(start).Round(time.Millisecond))
	fmt.Fprintf(b.out, "a counter in each replica's memory, as LiteLLM's TPM check, would have let each of the %d replicas send the PTU its\n"+
		"own %d tokens: up to %d, an overshoot of up to %.0f%%.\n", o.replicas, budget, budget*int64(o.replicas), 100*float64(o.replicas-1))
	truth := budgetFigures{tokens: float64(ptuTokens), requests: float64(ptuCalls), daySpend: ptuSpend, monthSpend: ptuSpend}
	return b.budgetRestart(ctx, l, ptu, truth)
}

// labCallers is how many callers, each on its own connection, drive
// the replica processes in -mode budget and -mode cost.
const labCallers = 8

// budgetFigures are what a replica counted of a router's budget: this
// minute's tokens and requests, this day's and month's spend.
type budgetFigures struct{ tokens, requests, daySpend, monthSpend float64 }

// same reports whether f and g are alike: the counts to the token, the
// spend to rounding.
func (f budgetFigures) same(g budgetFigures) bool {
	return f.tokens == g.tokens && f.requests == g.requests && math.Abs(f.daySpend-g.daySpend) < 1e-6 && math.Abs(f.monthSpend-g.monthSpend) < 1e-6
}

func (f budgetFigures) String() string {
	return fmt.Sprintf("%.0f tokens and %.0f requests this minute, %.6f spent this day and %.6f this month", f.tokens, f.requests, f.daySpend, f.monthSpend)
}

// budgetCounts is what each replica of l counts of router's budget: in
// the replica's memory, or from its /metrics.
func budgetCounts(ctx context.Context, l *lab, router string) ([]budgetFigures, error) {
	var out []budgetFigures
	if l.p == nil {
		for _, r := range l.f.Replicas {
			for _, c := range r.Broker().BudgetCounts() {
				if c.Router == router {
					out = append(out, budgetFigures{float64(c.Minute.Tokens), float64(c.Minute.Requests), c.Day.Spend, c.Month.Spend})
				}
			}
		}
		return out, nil
	}
	for _, p := range l.p.procs {
		var f budgetFigures
		for _, m := range []struct {
			cap string
			v   *float64
		}{{"tokens_per_minute", &f.tokens}, {"requests_per_minute", &f.requests}, {"spend_per_day", &f.daySpend}, {"spend_per_month", &f.monthSpend}} {
			v, ok, err := p.metric(ctx, l.client, fmt.Sprintf(`broker_budget_used{budget=%q,router=%q}`, m.cap, router))
			if err != nil || !ok {
				return nil, fmt.Errorf("replica %s: broker_budget_used of %s's %s: not read (%v)", p.id, router, m.cap, err)
			}
			*m.v = v
		}
		out = append(out, f)
	}
	return out, nil
}

// budgetRestart stops every replica of l and starts them anew, and
// compares what the new ones count of router's budget, before they hear
// any call, with what the old ones counted, and both with truth, what
// the bench's upstream answered.
func (b *bench) budgetRestart(ctx context.Context, l *lab, router string, truth budgetFigures) error {
	// The last transactions heard: every replica at truth, at most 5 s.
	var before []budgetFigures
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var err error
		if before, err = budgetCounts(ctx, l, router); err != nil {
			return err
		}
		if !slices.ContainsFunc(before, func(f budgetFigures) bool { return !f.same(truth) }) || time.Now().After(deadline) {
			break
		}
	}
	fmt.Fprintf(b.out, "\nthe PTU's answers said %v;\n", truth)
	for i, f := range before {
		if !f.same(truth) {
			fmt.Fprintf(b.out, "replica %d counted %v (MISSED: not what the answers said)\n", i+1, f)
		}
	}
	start := time.Now()
	if err := l.restart(ctx, b); err != nil {
		return err
	}
	took := time.Since(start)
	after, err := budgetCounts(ctx, l, router)
	if err != nil {
		return err
	}
	fmt.Fprintf(b.out, "restart: every replica stopped and %d started anew (%v); before hearing a call:\n", len(after), took.Round(time.Millisecond))
	exact := len(after) > 0
	for i, f := range after {
		verdict := "exactly what the answers said: 0 lost, 0 counted twice"
		if !f.same(truth) {
			exact = false
			verdict = fmt.Sprintf("%+.0f tokens, %+.0f requests against the answers (negative: lost; positive: counted twice)", f.tokens-truth.tokens, f.requests-truth.requests)
		}
		fmt.Fprintf(b.out, "  replica %d counts %v: %s\n", i+1, f, verdict)
	}
	fmt.Fprintf(b.out, "(target: exactly, in every period: %s)\n", targetVerdict(exact))
	return nil
}
