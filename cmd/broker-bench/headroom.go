package main

import (
	"context"
	"fmt"
	"time"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/standin"
)

// headroomMode measures the headroom strategy: two deployments, each with
// a quota of Q calls per window (their windows half a window apart, as
// two deployments' rarely agree), under a load of 1.6Q per window. The
// broker learns what each has left from their rate-limit headers in
// gecholog's transaction log, and should spare the clients 429s: at most
// 1% of the 429s random gets, in the same run, on deployments of its own.
func (b *bench) headroomMode(ctx context.Context) error {
	o := b.o
	q, w := o.quota, o.window
	head := pool("headroom", "headroom", "a", "b")
	rnd := pool("random", "random", "a", "b")
	now := time.Now()
	llms := map[string]*standin.LLM{}
	for _, p := range []broker.Pool{head, rnd} {
		for i, r := range p.Routers {
			llms[r.Path] = &standin.LLM{Model: "gpt-4o", Latency: standin.Uniform(20*time.Millisecond, 40*time.Millisecond),
				Quota: q, Window: w, Epoch: now.Add(time.Duration(i) * w / 2)}
		}
	}
	l, err := b.startLab(ctx, []broker.Pool{head, rnd}, llms, 0)
	if err != nil {
		return err
	}
	defer l.close()
	rate := 1.6 * float64(q) / w.Seconds()
	fmt.Fprintf(b.out, "%d replicas. Pools %s and %s, each of two deployments with a quota of %d calls per %v (windows %v apart);\n",
		o.replicas, head.Ingress, rnd.Ingress, q, w, w/2)
	fmt.Fprintf(b.out, "each pool gets %.1f calls/s (1.6Q per window for the two) at random arrivals for %v; upstream latency 20-40ms.\n", rate, o.duration)
	b.compressed(fmt.Sprintf("the quota is %d calls per %v where the real APIs count per minute; Retry-After is whole seconds, as they send it", q, w))
	fmt.Fprintln(b.out)

	logs := map[string]*callLog{head.Ingress: {}, rnd.Ingress: {}}
	late := l.drive(ctx, o.duration, map[string]float64{head.Ingress: rate, rnd.Ingress: rate}, logs)
	if ctx.Err() != nil {
		return nil
	}
	fmt.Fprintf(b.out, "%-22s %8s %8s %8s %8s %22s\n", "", "calls", "errors", "200s", "429s", "served a / b")
	limited := map[string]int{}
	for _, p := range []broker.Pool{head, rnd} {
		calls := logs[p.Ingress].calls()
		ok := byRouter(calls, 200)
		for _, n := range byRouter(calls, 429) {
			limited[p.Ingress] += n
		}
		fmt.Fprintf(b.out, "%-22s %8d %8d %8d %8d %22s\n", p.Ingress+" ("+p.Strategy+")", len(calls), logs[p.Ingress].errors,
			ok[p.Routers[0].Path]+ok[p.Routers[1].Path], limited[p.Ingress],
			fmt.Sprintf("%d / %d", ok[p.Routers[0].Path], ok[p.Routers[1].Path]))
	}
	fmt.Fprintf(b.out, "\n(429s: client-visible, gecholog never retries; calls that waited to start: %d)\n", late)
	if n := limited[head.Ingress]; n > 0 {
		fmt.Fprintf(b.out, "headroom: %d of its %d 429s came when the last answer of every router had said none was left until after the call\n",
			allSpent(logs[head.Ingress].calls()), n)
	}
	h, r := limited[head.Ingress], limited[rnd.Ingress]
	switch {
	case r == 0:
		fmt.Fprintf(b.out, "headroom: %d client-visible 429s, random none: nothing to compare (target ≤ 1%% of random's: %s; raise the load or lower -quota)\n",
			h, targetVerdict(h == 0))
	default:
		fmt.Fprintf(b.out, "headroom: %d client-visible 429s, %.2f%% of random's %d (target ≤ 1%%: %s)\n", h, pct(h, r), r, targetVerdict(100*h <= r))
	}
	return nil
}

// allSpent counts the 429s among calls that came when, by the answers
// that had ended before the call started, every router had none left
// until after it: the broker could only choose among routers with none.
func allSpent(calls []standin.Result) int {
	n := 0
	for i, c := range calls {
		if c.Status != 429 {
			continue
		}
		last := map[string]standin.Result{}
		for _, p := range calls[:i] { // sorted by Stop: the latest wins
			if p.Stop.Before(c.Start) {
				last[p.Router] = p
			}
		}
		spent := len(last) > 0
		for _, p := range last {
			reset, err := time.ParseDuration(p.Headers.Get("X-Ratelimit-Reset-Requests"))
			if p.Headers.Get("X-Ratelimit-Remaining-Requests") != "0" || err != nil || !p.Stop.Add(reset).After(c.Start) {
				spent = false
			}
		}
		if spent && len(last) == 2 {
			n++
		}
	}
	return n
}
