package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
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
	p.Routers[0].Budget = &broker.Budget{TokensPerMinute: budget}
	llms := bySpeed(map[string]time.Duration{"ptu": 50 * time.Millisecond, "payg": 50 * time.Millisecond}, 0.3, p)
	if left := time.Until(time.Now().Truncate(time.Minute).Add(time.Minute)); left < d+5*time.Second {
		fmt.Fprintf(b.out, "waiting %v for the next minute, the budget's period, to begin\n", left.Round(time.Second))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(left + 200*time.Millisecond):
		}
	}
	l, err := b.startLab(ctx, []broker.Pool{p}, llms, 0)
	if err != nil {
		return err
	}
	defer l.close()
	ptu := p.Routers[0].Path
	var mu sync.Mutex
	var ptuTokens, ptuCalls int64
	var reached time.Time // when the calls answered on the PTU passed the budget
	l.gw.Answer = func(res standin.Result) json.RawMessage {
		in, out := 500+rand.IntN(1001), 40+rand.IntN(81)
		if res.Router == ptu && res.Status == 200 {
			mu.Lock()
			ptuTokens += int64(in + out)
			ptuCalls++
			if ptuTokens >= budget && reached.IsZero() {
				reached = time.Now()
			}
			mu.Unlock()
		}
		return fmt.Appendf(nil, `{"object":"chat.completion","choices":[{"message":{"content":"ok"}}],"usage":{"prompt_tokens":%d,"completion_tokens":%d}}`, in, out)
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
	return b.budgetRestart(ctx, l, ptu)
}

// budgetRestart stops every replica of l and starts them anew, and
// compares what the new ones count of router's budget, before they hear
// any call, with what the old ones counted.
func (b *bench) budgetRestart(ctx context.Context, l *lab, router string) error {
	count := func() (broker.BudgetCount, bool) {
		for _, c := range l.f.Replicas[0].Broker().BudgetCounts() {
			if c.Router == router {
				return c, true
			}
		}
		return broker.BudgetCount{}, false
	}
	// The last transactions heard: the count still for 200 ms, at most 5 s.
	before, _ := count()
	for still, deadline := 0, time.Now().Add(5*time.Second); still < 4 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		c, _ := count()
		if c.Day.Requests == before.Day.Requests {
			still++
		} else {
			before, still = c, 0
		}
	}
	start := time.Now()
	if err := l.restart(ctx, b); err != nil {
		return err
	}
	took := time.Since(start)
	after, _ := count()
	lost := func(a, b broker.Used) (tokens, requests int64) { return a.Tokens - b.Tokens, a.Requests - b.Requests }
	var diffs []string
	for _, p := range []struct {
		name string
		a, b broker.Used
	}{{"minute", before.Minute, after.Minute}, {"day", before.Day, after.Day}, {"month", before.Month, after.Month}} {
		tk, rq := lost(p.a, p.b)
		if tk != 0 || rq != 0 || !p.a.Start.Equal(p.b.Start) || math.Abs(p.a.Spend-p.b.Spend) > 1e-9 {
			diffs = append(diffs, fmt.Sprintf("%s: %d tokens and %d requests lost (negative: counted twice)", p.name, tk, rq))
		}
	}
	fmt.Fprintf(b.out, "\nrestart: every replica stopped and %d started anew (%v): before hearing a call they count %d tokens and %d requests\n"+
		"this day, as the replicas before counted %d and %d: ", len(l.f.Replicas), took.Round(time.Millisecond), after.Day.Tokens, after.Day.Requests,
		before.Day.Tokens, before.Day.Requests)
	if len(diffs) == 0 {
		fmt.Fprintln(b.out, "0 lost, 0 counted twice, in every period (target: exactly: met)")
	} else {
		fmt.Fprintf(b.out, "%s (target: exactly: MISSED)\n", strings.Join(diffs, "; "))
	}
	return nil
}
