package main

import (
	"context"
	"fmt"
	"time"

	"github.com/gecholog/broker/broker"
)

// latencyMode measures the latency strategy: deployments answering in 50,
// 100 and 400 ms, none saturated. The mean upstream time should be at
// most 1.25 times the fastest router's, while every router still gets at
// least 1% of the calls, so that a slow router that recovers is noticed.
// Beside it, in the same run on deployments of its own, random.
func (b *bench) latencyMode(ctx context.Context) error {
	o := b.o
	speeds := map[string]time.Duration{"fast": 50 * time.Millisecond, "mid": 100 * time.Millisecond, "slow": 400 * time.Millisecond}
	lat := pool("latency", "latency", "fast", "mid", "slow")
	rnd := pool("random", "random", "fast", "mid", "slow")
	llms := bySpeed(speeds, 0.1, lat, rnd)
	l, err := b.startLab(ctx, []broker.Pool{lat, rnd}, llms, 0)
	if err != nil {
		return err
	}
	defer l.close()
	rate := float64(o.load)
	if rate == 0 {
		rate = 40
	}
	fmt.Fprintf(b.out, "%d replicas. Pools %s and %s, each of deployments answering in 50, 100 and 400 ms (±10%%), no limits;\n", o.replicas, lat.Ingress, rnd.Ingress)
	fmt.Fprintf(b.out, "each pool gets %.0f calls/s at random arrivals for %v. Latency is learnt from gecholog's transaction log.\n\n", rate, o.duration)

	logs := map[string]*callLog{lat.Ingress: {}, rnd.Ingress: {}}
	start := time.Now()
	late := l.drive(ctx, o.duration, map[string]float64{lat.Ingress: rate, rnd.Ingress: rate}, logs)
	if ctx.Err() != nil {
		return nil
	}
	fmt.Fprintf(b.out, "%-22s %8s %8s %12s %12s %14s   %s\n", "", "calls", "errors", "mean", "fastest's", "mean after 2s", "share of calls: fast / mid / slow")
	var verdict string
	var notes []string
	for _, p := range []broker.Pool{lat, rnd} {
		calls := logs[p.Ingress].calls()
		var sum, later time.Duration
		nLater := 0
		per := map[string]time.Duration{}
		n := byRouter(calls, 0)
		for _, c := range calls {
			sum += c.Upstream()
			per[c.Router] += c.Upstream()
			if c.Start.After(start.Add(2 * time.Second)) {
				later += c.Upstream()
				nLater++
			}
		}
		mean := sum / time.Duration(max(len(calls), 1))
		fastest := time.Duration(0)
		least := 1.0
		shares := ""
		for i, r := range p.Routers {
			if n[r.Path] > 0 {
				if m := per[r.Path] / time.Duration(n[r.Path]); fastest == 0 || m < fastest {
					fastest = m
				}
			}
			share := float64(n[r.Path]) / float64(max(len(calls), 1))
			least = min(least, share)
			if i > 0 {
				shares += " / "
			}
			shares += fmt.Sprintf("%.1f%%", 100*share)
		}
		fmt.Fprintf(b.out, "%-22s %8d %8d %12s %12s %14s   %s\n", p.Ingress+" ("+p.Strategy+")", len(calls), logs[p.Ingress].errors,
			fmtLatency(mean), fmtLatency(fastest), fmtLatency(later/time.Duration(max(nLater, 1))), shares)
		early := 0
		for _, c := range calls {
			if c.Router == p.Routers[2].Path && !c.Start.After(start.Add(2*time.Second)) {
				early++
			}
		}
		notes = append(notes, fmt.Sprintf("%s: %s took %d calls, %d of them in the first 2s", p.Ingress, p.Routers[2].Path, n[p.Routers[2].Path], early))
		if p.Ingress == lat.Ingress {
			ratio := float64(mean) / float64(max(fastest, 1))
			verdict = fmt.Sprintf("latency: mean upstream time %.3f × the fastest router's (target ≤ 1.25: %s); the least-used router got %.1f%% of calls (target ≥ 1%%: %s)",
				ratio, targetVerdict(ratio <= 1.25), 100*least, targetVerdict(least >= 0.01))
		}
	}
	fmt.Fprintf(b.out, "\n(upstream time: gecholog's outbound_inbound_timer, stop - start; after 2s: the calls that started then, once every\n"+
		"router has been heard of; calls that waited to start: %d)\n", late)
	for _, n := range notes {
		fmt.Fprintln(b.out, n)
	}
	fmt.Fprintln(b.out, verdict)
	return nil
}
