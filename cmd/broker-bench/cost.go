package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/standin"
)

// costMode measures the cost strategy: three deployments priced apart,
// one cheap on input and dear on output, and traffic whose prompts
// outweigh its answers, each call's tokens told in its transaction's
// usage as the upstream's answer says them. What the same traffic costs
// by cost and by random, in the same run on deployments of their own,
// counted by the bench from the tokens it made each call use; and the
// share of cost's calls on the router cheapest for that traffic.
func (b *bench) costMode(ctx context.Context) error {
	o := b.o
	// Per million tokens, input and output (cached input as input).
	prices := map[string]broker.Price{
		"a": {Input: 0.4, CachedInput: 0.4, Output: 16}, // cheap prompts, dear answers
		"b": {Input: 2, CachedInput: 2, Output: 6},
		"c": {Input: 3, CachedInput: 3, Output: 12},
	}
	names := []string{"a", "b", "c"}
	cost := pool("cost", "cost", names...)
	rnd := pool("random", "random", names...)
	for _, p := range []broker.Pool{cost, rnd} {
		for i := range p.Routers {
			price := prices[names[i]]
			p.Routers[i].Price = &price
		}
	}
	llms := bySpeed(map[string]time.Duration{"a": 30 * time.Millisecond, "b": 30 * time.Millisecond, "c": 30 * time.Millisecond}, 0.3, cost, rnd)
	var l *lab
	var err error
	if o.inProcess {
		l, err = b.startLab(ctx, []broker.Pool{cost, rnd}, llms, 0)
	} else {
		l, err = b.startProcLab(ctx, []broker.Pool{cost, rnd}, llms, labCallers)
	}
	if err != nil {
		return err
	}
	defer l.close()
	// Each call: a prompt of 500 to 1500 tokens, an answer of 40 to 120:
	// on average 1000 to 80, so a costs 0.00168 a call, b 0.00248 and c
	// 0.00396; by the default mix (750 to 250) b would be the cheapest.
	const cheapestRouter = "a"
	var mu sync.Mutex
	spend := map[string]float64{} // by ingress
	calls := map[string]int{}
	answer := func(res standin.Result) json.RawMessage {
		in, out := 500+rand.IntN(1001), 40+rand.IntN(81)
		if name := strings.TrimSuffix(strings.TrimPrefix(res.Router, res.Ingress), "/"); res.Status == 200 {
			if p, ok := prices[name]; ok {
				mu.Lock()
				spend[res.Ingress] += p.Cost(broker.Usage{State: broker.UsageKnown, Input: int64(in), Output: int64(out)})
				calls[res.Ingress]++
				mu.Unlock()
			}
		}
		return fmt.Appendf(nil, `{"object":"chat.completion","choices":[{"message":{"content":"ok"}}],"usage":{"prompt_tokens":%d,"completion_tokens":%d}}`, in, out)
	}
	l.gw.Answer = answer
	if l.p != nil {
		l.p.answer(answer)
	}
	rate := float64(o.load)
	if rate == 0 {
		rate = 40
	}
	fmt.Fprintf(b.out, "%d replicas. Pools %s and %s, each of three deployments answering in 30 ms (±30%%), priced per million tokens:\n", o.replicas, cost.Ingress, rnd.Ingress)
	for _, n := range names {
		p := prices[n]
		fmt.Fprintf(b.out, "  %s: input %g, output %g\n", n, p.Input, p.Output)
	}
	fmt.Fprintf(b.out, "each pool gets %.0f calls/s at random arrivals for %v; each call's prompt is 500-1500 tokens and its answer 40-120\n"+
		"(on average 1000 to 80), as its transaction's usage says, where the replicas hear it. For this traffic %s is the cheapest\n"+
		"per call; by the default mix (3 to 1, until tokens are heard) b is.\n\n", rate, o.duration, cheapestRouter)

	logs := map[string]*callLog{cost.Ingress: {}, rnd.Ingress: {}}
	late := l.drive(ctx, o.duration, map[string]float64{cost.Ingress: rate, rnd.Ingress: rate}, logs)
	if ctx.Err() != nil {
		return nil
	}
	mu.Lock()
	defer mu.Unlock()
	fmt.Fprintf(b.out, "%-18s %8s %8s %12s %12s   %s\n", "", "calls", "errors", "spend", "per call", "share of calls: a / b / c")
	per := map[string]float64{}
	share := map[string]float64{}
	for _, p := range []broker.Pool{cost, rnd} {
		done := logs[p.Ingress].calls()
		n := byRouter(done, 0)
		per[p.Ingress] = spend[p.Ingress] / float64(max(calls[p.Ingress], 1))
		shares := make([]string, len(names))
		for i, r := range p.Routers {
			shares[i] = fmt.Sprintf("%.1f%%", pct(n[r.Path], len(done)))
		}
		share[p.Ingress] = pct(n[p.Ingress+cheapestRouter+"/"], len(done))
		fmt.Fprintf(b.out, "%-18s %8d %8d %12.5f %12.7f   %s\n", p.Ingress+" ("+p.Strategy+")", len(done), logs[p.Ingress].errors,
			spend[p.Ingress], per[p.Ingress], strings.Join(shares, " / "))
	}
	fmt.Fprintf(b.out, "\n(spend: counted by the bench from the tokens each call's answer said, at its router's price; calls that waited to start: %d)\n", late)
	if why, err := l.explainWhy(ctx, cost.Ingress); err == nil {
		fmt.Fprintf(b.out, "replica-1 explains %s: %s\n", cost.Ingress, why)
	} else {
		fmt.Fprintf(b.out, "replica-1 did not explain %s: %v\n", cost.Ingress, err)
	}
	ratio := per[cost.Ingress] / max(per[rnd.Ingress], 1e-12)
	fmt.Fprintf(b.out, "cost: spend per call %.3f × random's on the same traffic; %.1f%% of its calls on the cheapest router, %s (random: %.1f%%)\n",
		ratio, share[cost.Ingress], cheapestRouter, share[rnd.Ingress])
	return nil
}
