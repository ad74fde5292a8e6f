package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/standin"
)

// drift measures whether least-busy's counts of calls in flight drift:
// many calls, a share of whose reports are lost (the gateway skips the
// response context, as when its processor call times out), then idle.
// Every replica's count of every router should be back to 0 within the
// in-flight bound, set short here. Beside it, in the same run on
// deployments of its own, a random pool, whose counts the replicas keep
// all the same.
func (b *bench) drift(ctx context.Context) error {
	o := b.o
	lb := pool("leastbusy", "least-busy", "a", "b", "c")
	rnd := pool("random", "random", "a", "b", "c")
	pools := []broker.Pool{lb, rnd}
	l, err := b.startLab(ctx, pools, instant(pools...), o.bound)
	if err != nil {
		return err
	}
	defer l.close()
	gw := l.gw
	gw.LoseReports = o.lose
	// A call given up on loses its report too: wait long enough that only
	// the share asked is lost.
	gw.Timeout = max(labTimeout(o.timeout), 2*time.Second)
	fmt.Fprintf(b.out, "%d replicas, in-flight bound %v. Pools %s and %s of three deployments that answer at once;\n", o.replicas, o.bound, lb.Ingress, rnd.Ingress)
	fmt.Fprintf(b.out, "%d calls to each, %d callers each, %.1f%% of the reports lost (no response context). Then idle.\n", o.calls, o.callers, 100*o.lose)
	b.compressed(fmt.Sprintf("the in-flight bound is %v where the broker's default is %v", o.bound, broker.DefaultInFlightBound))
	fmt.Fprintln(b.out)

	type tally struct{ calls, lost, errors atomic.Int64 }
	tallies := map[string]*tally{lb.Ingress: {}, rnd.Ingress: {}}
	start := time.Now()
	// Bounded in count by o.calls, and in time by the run's context.
	rctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	for _, p := range pools {
		t := tallies[p.Ingress]
		wg.Go(func() {
			gw.Run(rctx, p.Ingress, o.calls, o.callers, func(r standin.Result, err error) {
				t.calls.Add(1)
				switch {
				case err != nil:
					t.errors.Add(1)
				case !r.Reported:
					t.lost.Add(1)
				}
			})
		})
	}
	wg.Wait()
	idle := time.Now()
	if ctx.Err() != nil {
		return nil
	}
	// The replicas tell each other their counts at least every 100 ms:
	// after twice that, what they count is the reports lost.
	const settle = 200 * time.Millisecond
	// Every 10 ms, the most any replica counts in flight for each pool,
	// until every count is 0 or twice the bound has passed.
	atIdle, settled := map[string]int64{}, map[string]int64{}
	zero := map[string]time.Duration{}
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for first := true; (len(zero) < len(pools) || len(settled) < len(pools)) && time.Since(idle) < 2*o.bound+5*time.Second; first = false {
		most := map[string]int64{}
		for _, r := range l.f.Replicas {
			sums := map[string]int64{}
			for _, v := range r.Broker().View(time.Now()) {
				sums[v.Ingress] += v.InFlight
			}
			for ingress, n := range sums {
				most[ingress] = max(most[ingress], n)
			}
		}
		for _, p := range pools {
			if first {
				atIdle[p.Ingress] = most[p.Ingress]
			}
			if _, ok := settled[p.Ingress]; !ok && time.Since(idle) >= settle {
				settled[p.Ingress] = most[p.Ingress]
			}
			if _, done := zero[p.Ingress]; !done && most[p.Ingress] == 0 {
				zero[p.Ingress] = time.Since(idle)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
	fmt.Fprintf(b.out, "%-24s %9s %8s %8s %10s %16s %14s %16s\n", "", "calls", "errors", "lost", "calls/s", "in flight idle", "after 200ms", "back to 0 after")
	var verdict string
	for _, p := range pools {
		tl := tallies[p.Ingress]
		back, ok := zero[p.Ingress]
		backStr := back.Round(time.Millisecond).String()
		if !ok {
			backStr = "not within " + (2*o.bound + 5*time.Second).String()
		}
		fmt.Fprintf(b.out, "%-24s %9d %8d %8d %10.0f %16d %14d %16s\n", p.Ingress+" ("+p.Strategy+")", tl.calls.Load(), tl.errors.Load(), tl.lost.Load(),
			float64(tl.calls.Load())/idle.Sub(start).Seconds(), atIdle[p.Ingress], settled[p.Ingress], backStr)
		if p.Ingress == lb.Ingress {
			verdict = fmt.Sprintf("least-busy drift: after %d calls, %d reports lost, every replica's counts back to 0 %s after the last call (target ≤ the bound, %v: %s)",
				tl.calls.Load(), tl.lost.Load(), backStr, o.bound, targetVerdict(ok && back <= o.bound))
		}
	}
	fmt.Fprintf(b.out, "\n(in flight idle: the most any replica counted over the pool's routers when the last call ended, and 200ms later,\n"+
		"once the replicas have told each other the last reports: the reports lost within the last %v; the upstreams hold none)\n%s\n", o.bound, verdict)
	return nil
}
