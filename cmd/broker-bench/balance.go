package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/standin"
)

// balance measures least-busy: deployments of different speeds and
// weights, under a steady load. Every 10 ms it reads how many calls each
// deployment holds (the truth, counted by the deployments themselves) and
// checks that no router is more than 2 calls above its weighted fair share
// of the pool's calls in progress while another is more than 2 below.
// Beside it, in the same run on deployments of its own, random.
func (b *bench) balance(ctx context.Context) error {
	o := b.o
	speeds := map[string]time.Duration{"fast": 20 * time.Millisecond, "mid": 50 * time.Millisecond, "slow": 100 * time.Millisecond}
	lb := pool("leastbusy", "least-busy", "fast", "mid", "slow")
	rnd := pool("random", "random", "fast", "mid", "slow")
	lb.Routers[2].Weight, rnd.Routers[2].Weight = 2, 2
	llms := bySpeed(speeds, 0.2, lb, rnd)
	l, err := b.startLab(ctx, []broker.Pool{lb, rnd}, llms, 0)
	if err != nil {
		return err
	}
	defer l.close()
	rate := float64(o.load)
	if rate == 0 {
		rate = 150
	}
	fmt.Fprintf(b.out, "%d replicas. Pools %s and %s, each of deployments answering in 20, 50 and 100 ms (±20%%), weights 1, 1 and 2;\n", o.replicas, lb.Ingress, rnd.Ingress)
	fmt.Fprintf(b.out, "each pool gets %.0f calls/s at random arrivals for %v. Every 10 ms the deployments say how many calls each holds.\n\n", rate, o.duration)

	samples := map[string]*imbalance{lb.Ingress: {}, rnd.Ingress: {}}
	sctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-sctx.Done():
				return
			case <-t.C:
				for _, p := range []broker.Pool{lb, rnd} {
					samples[p.Ingress].sample(p, llms)
				}
			}
		}
	})
	logs := map[string]*callLog{lb.Ingress: {}, rnd.Ingress: {}}
	late := l.drive(ctx, o.duration, map[string]float64{lb.Ingress: rate, rnd.Ingress: rate}, logs)
	stop()
	wg.Wait()
	if ctx.Err() != nil {
		return nil
	}
	fmt.Fprintf(b.out, "%-24s %7s %7s %9s %9s %12s %14s   %s\n", "", "calls", "errors", "samples", "balanced", "worst", "mean held", "calls: fast / mid / slow")
	var verdict string
	for _, p := range []broker.Pool{lb, rnd} {
		s := samples[p.Ingress]
		calls := logs[p.Ingress].calls()
		n := byRouter(calls, 0)
		fmt.Fprintf(b.out, "%-24s %7d %7d %9d %8.1f%% %12s %14.1f   %d / %d / %d\n", p.Ingress+" ("+p.Strategy+")", len(calls), logs[p.Ingress].errors,
			s.n, pct(s.held, s.n), fmt.Sprintf("+%.1f / -%.1f", s.worstAbove, s.worstBelow), float64(s.total)/float64(max(s.n, 1)),
			n[p.Routers[0].Path], n[p.Routers[1].Path], n[p.Routers[2].Path])
		if p.Ingress == lb.Ingress {
			verdict = fmt.Sprintf("least-busy: balanced within 2 calls of the weighted fair share in %.1f%% of %d samples (target: all: %s); worst +%.1f / -%.1f",
				pct(s.held, s.n), s.n, targetVerdict(s.held == s.n), s.worstAbove, s.worstBelow)
		}
	}
	fmt.Fprintf(b.out, "\n(balanced: no router more than 2 calls above its weighted fair share of the pool's calls in progress while another is\n"+
		"more than 2 below; worst: the sample where the smaller of the two excesses was largest; calls that waited to start: %d)\n%s\n", late, verdict)
	return nil
}

// imbalance is the samples of one pool's calls in progress.
type imbalance struct {
	n, held                int
	total                  int64
	worstAbove, worstBelow float64
}

// sample reads what each of p's deployments holds now and scores it
// against the weighted fair shares.
func (s *imbalance) sample(p broker.Pool, llms map[string]*standin.LLM) {
	var total int64
	weights := 0
	held := make([]int64, len(p.Routers))
	for i, r := range p.Routers {
		held[i] = llms[r.Path].InProgress()
		total += held[i]
		weights += r.Weight
	}
	above, below := 0.0, 0.0
	for i, r := range p.Routers {
		d := float64(held[i]) - float64(total)*float64(r.Weight)/float64(weights)
		above, below = max(above, d), max(below, -d)
	}
	s.n++
	s.total += total
	if above <= 2 || below <= 2 {
		s.held++
	}
	if min(above, below) > min(s.worstAbove, s.worstBelow) {
		s.worstAbove, s.worstBelow = above, below
	}
}
