package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/standin"
)

// ptu measures what issue 23 measured through the real gateway: replica
// processes of the broker binary behind the stand-in for gecholog, which
// makes each call in gecholog's order (request context, upstream call,
// response context to whichever replica the queue group picks, then the
// transaction on the logger subject, which every replica hears); a PTU
// deployment on tier 0 whose quota window opens with the first call after
// the last window ended, as a real one's does, and a pay-as-you-go one on
// tier 1 without a limit; a closed loop of a few callers, each making its
// calls one after the other, as clients waiting for their answers do.
// Each run has pools and deployments of its own, so that no run inherits
// another's rate-limit state or disables.
func (b *bench) ptuMode(ctx context.Context) error {
	o := b.o
	strategies := strings.Split(o.ptuStrategies, ",")
	bin, nc, cs, done, err := b.fleetSetup(ctx)
	if err != nil {
		return err
	}
	defer done()
	type run struct {
		strategy string
		pool     broker.Pool
		ptu      *standin.LLM
	}
	var runs []run
	var pools []broker.Pool
	llms := map[string]*standin.LLM{}
	latency := standin.Uniform(20*time.Millisecond, 40*time.Millisecond)
	for i := range o.ptuRuns {
		for _, s := range strategies {
			p := pool(fmt.Sprintf("%s%d", strings.ReplaceAll(s, "-", ""), i+1), s, "ptu", "payg")
			p.Routers[1].Priority = 1
			ptu := &standin.LLM{Model: "gpt-4o (PTU)", Latency: latency, Quota: o.quota, Window: o.window, Lazy: true}
			llms[p.Routers[0].Path] = ptu
			llms[p.Routers[1].Path] = &standin.LLM{Model: "gpt-4o (pay-as-you-go)", Latency: latency}
			runs = append(runs, run{s, p, ptu})
			pools = append(pools, p)
		}
	}
	if _, _, err := (configWriter{cs}).write(ctx, pools); err != nil {
		return fmt.Errorf("write the fleet's configuration: %w", err)
	}
	ups := &standin.Upstreams{}
	defer ups.Close()
	for router, llm := range llms {
		if err := ups.Add(router, llm); err != nil {
			return err
		}
	}
	_, stop, err := b.startProcs(ctx, bin, o.replicas)
	if err != nil {
		return err
	}
	defer stop()
	client := standin.NewClient(30 * time.Second)
	defer client.CloseIdleConnections()
	gw := standin.Gateway{NC: nc, Subject: b.subject, Upstreams: ups.URLs, Client: client,
		Logger: b.loggerSubject(), Timeout: labTimeout(o.timeout), Payload: 1024}

	fmt.Fprintf(b.out, "%d replica processes of the broker binary (%s), in a queue group; the stand-in for gecholog makes each call\n", o.replicas, bin)
	order := "the client's answer, then (async) the response context, then the transaction"
	if o.ptuSerial {
		order = "the response context, the transaction, and only then the client's answer"
	}
	fmt.Fprintf(b.out, "in gecholog's order: request context, upstream call, %s on %s.\n", order, b.loggerSubject())
	fmt.Fprintf(b.out, "Each pool: ptu on tier 0, a quota of %d requests per %v whose window opens with the first call after the last\n", o.quota, o.window)
	fmt.Fprintf(b.out, "ended (x-ratelimit-* on every answer, 429 with Retry-After in whole seconds beyond it); payg on tier 1, no limit.\n")
	fmt.Fprintf(b.out, "Each run: %d calls, a closed loop of %d callers; upstream latency 20-40ms. Runs one after the other, each on pools of its own.\n\n", o.ptuCalls, o.ptuCallers)
	fmt.Fprintf(b.out, "%-10s %4s %8s %8s %6s %9s %7s %8s %6s %11s %10s %8s\n",
		"strategy", "run", "seconds", "tier 0", "windows", "possible", "share", "idle", "429s", "most 429s", "worst", "errors")
	fmt.Fprintf(b.out, "%-10s %4s %8s %8s %6s %9s %7s %8s %6s %11s %10s %8s\n",
		"", "", "", "calls", "opened", "", "", "between", "", "per window", "window", "")
	met := true
	for i, r := range runs {
		if ctx.Err() != nil {
			return nil
		}
		var mu sync.Mutex
		var calls []standin.Result
		g := gw
		if !o.ptuSerial {
			g.Tails = &standin.Tails{}
		}
		errs := 0
		start := time.Now()
		g.Run(ctx, r.pool.Ingress, o.ptuCalls, o.ptuCallers, func(res standin.Result, err error) {
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs++
				return
			}
			calls = append(calls, res)
		})
		elapsed := time.Since(start)
		if g.Tails != nil {
			errs += g.Tails.Wait()
		}
		f := ptuFigures(r.ptu.Windows(), o.quota, o.window, elapsed, len(calls))
		limited := byRouter(calls, 429)[r.pool.Routers[0].Path]
		ok := f.share >= 0.95 && f.most429 <= 1
		met = met && (r.strategy != "headroom" || ok)
		fmt.Fprintf(b.out, "%-10s %4d %8.1f %8d %6d %9d %6.1f%% %8v %6d %11d %9.1f%% %8d %s\n",
			r.strategy, i/len(strategies)+1, elapsed.Seconds(), f.served, f.windows, f.possible, 100*f.share,
			f.idle.Round(10*time.Millisecond), limited, f.most429, 100*f.worst, errs, targetVerdict(ok))
	}
	fmt.Fprintf(b.out, "\n(tier 0 calls: the PTU's 200s; possible: the quota of the whole windows the run's time holds back to back from its first call,\n"+
		"and of its last part window the calls the run made in that time; share: tier 0 calls over possible; idle between: the time from\n"+
		"a window's end to the next window's first call, summed; most 429s per window: the most the PTU answered in one window, each a\n"+
		"client's 429, as gecholog never retries; worst window: the fewest calls a whole window served, over the quota)\n")
	fmt.Fprintf(b.out, "target for headroom, every run: share ≥ 95%% and most 429s per window ≤ 1: %s\n", targetVerdict(met))
	return nil
}

// ptuRun is what one run's PTU deployment did.
type ptuRun struct {
	served, windows, possible int
	share, worst              float64 // of possible; the fewest a whole window served, over the quota
	idle                      time.Duration
	most429                   int
}

// ptuFigures reads a run from the PTU's windows (each opened by its first
// call), its quota and window, the run's time and the calls it made.
func ptuFigures(ws []standin.WindowCount, quota int, window, elapsed time.Duration, calls int) ptuRun {
	var f ptuRun
	f.worst = -1
	for i, w := range ws {
		f.served += w.Served
		f.windows++
		f.most429 = max(f.most429, w.Limited)
		if i > 0 {
			f.idle += max(w.Start.Sub(ws[i-1].Start.Add(window)), 0)
		}
		if i < len(ws)-1 { // the last is cut by the run's end
			if s := float64(w.Served) / float64(quota); f.worst < 0 || s < f.worst {
				f.worst = s
			}
		}
	}
	whole := int(elapsed / window)
	rest := elapsed - time.Duration(whole)*window
	f.possible = whole*quota + min(quota, int(float64(calls)*rest.Seconds()/elapsed.Seconds()))
	f.possible = min(f.possible, calls)
	f.share = float64(f.served) / float64(max(f.possible, 1))
	f.worst = max(f.worst, 0)
	return f
}
