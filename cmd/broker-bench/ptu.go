package main

import (
	"context"
	"fmt"
	"net/http"
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
// another's rate-limit state or disables. With -gl the real gecholog
// gateway stands where the stand-in does (realgw.go), and the callers are
// its HTTP clients.
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
		own      *standin.LLM // the ingress's own upstream, with -gl
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
			var own *standin.LLM
			if o.gl != "" {
				// The ingress's own outbound, where gl sends a call whose
				// request context went unanswered: counted apart.
				own = &standin.LLM{Model: "gpt-4o (the ingress's own)", Latency: latency}
				llms[p.Ingress] = own
			}
			runs = append(runs, run{s, p, ptu, own})
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
	var gl *glGateway
	if o.gl != "" {
		if gl, err = b.startGL(ctx, nc, o.gl, pools, ups.URLs); err != nil {
			return err
		}
		defer gl.stop()
	}

	if gl != nil {
		fmt.Fprintf(b.out, "%d replica processes of the broker binary (%s), in a queue group, behind the real gecholog gateway\n", o.replicas, bin)
		fmt.Fprintf(b.out, "(%s at %s, processor timeout %v, logger %s); the callers are HTTP clients of its ingress paths.\n",
			o.gl, gl.base, time.Duration(max(o.timeout/time.Millisecond, 1))*time.Millisecond, b.loggerSubject())
	} else {
		fmt.Fprintf(b.out, "%d replica processes of the broker binary (%s), in a queue group; the stand-in for gecholog makes each call\n", o.replicas, bin)
		order := "the client's answer, then (async) the response context, then the transaction"
		if o.ptuSerial {
			order = "the response context, the transaction, and only then the client's answer"
		}
		fmt.Fprintf(b.out, "in gecholog's order: request context, upstream call, %s on %s.\n", order, b.loggerSubject())
	}
	fmt.Fprintf(b.out, "Each pool: ptu on tier 0, a quota of %d requests per %v whose window opens with the first call after the last\n", o.quota, o.window)
	fmt.Fprintf(b.out, "ended (x-ratelimit-* on every answer, 429 with Retry-After in whole seconds beyond it); payg on tier 1, no limit.\n")
	fmt.Fprintf(b.out, "Each run: %d calls, a closed loop of %d callers; upstream latency 20-40ms. Runs one after the other, each on pools of its own.\n\n", o.ptuCalls, o.ptuCallers)
	glHead, glHead2 := "", ""
	if gl != nil {
		glHead, glHead2 = fmt.Sprintf(" %10s %14s", "to ingress", "gl unanswered"), fmt.Sprintf(" %10s %14s", "", "req / resp")
	}
	fmt.Fprintf(b.out, "%-10s %4s %8s %8s %6s %9s %7s %8s %6s %11s %10s %8s%s\n",
		"strategy", "run", "seconds", "tier 0", "windows", "possible", "share", "idle", "429s", "most 429s", "worst", "errors", glHead)
	fmt.Fprintf(b.out, "%-10s %4s %8s %8s %6s %9s %7s %8s %6s %11s %10s %8s%s\n",
		"", "", "", "calls", "opened", "", "", "between", "", "per window", "window", "", glHead2)
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
		errs, limited, answered := 0, 0, 0
		var reqFailed, respFailed int
		start := time.Now()
		if gl != nil {
			req0, resp0 := gl.processorFailures()
			gl.run(ctx, client, r.pool.Ingress, o.ptuCalls, o.ptuCallers, func(status int, err error) {
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err != nil:
					errs++
				case status == http.StatusTooManyRequests:
					limited++
					answered++
				case status == http.StatusOK:
					answered++
				default:
					errs++
				}
			})
			// gl sends the response context after the client's answer
			// and logs its failure up to a timeout later.
			time.Sleep(max(o.timeout, 50*time.Millisecond) + 100*time.Millisecond)
			req1, resp1 := gl.processorFailures()
			reqFailed, respFailed = req1-req0, resp1-resp0
		} else {
			g.Run(ctx, r.pool.Ingress, o.ptuCalls, o.ptuCallers, func(res standin.Result, err error) {
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					errs++
					return
				}
				calls = append(calls, res)
			})
		}
		elapsed := time.Since(start)
		if g.Tails != nil {
			errs += g.Tails.Wait()
		}
		if gl == nil {
			answered = len(calls)
			limited = byRouter(calls, 429)[r.pool.Routers[0].Path]
		}
		f := ptuFigures(r.ptu.Windows(), o.quota, o.window, elapsed, answered)
		ok := f.share >= 0.95 && f.most429 <= 1
		met = met && (r.strategy != "headroom" || ok)
		glCols := ""
		if gl != nil {
			glCols = fmt.Sprintf(" %10d %14s", r.own.Served(), fmt.Sprintf("%d / %d", reqFailed, respFailed))
		}
		fmt.Fprintf(b.out, "%-10s %4d %8.1f %8d %6d %9d %6.1f%% %8v %6d %11d %9.1f%% %8d%s %s\n",
			r.strategy, i/len(strategies)+1, elapsed.Seconds(), f.served, f.windows, f.possible, 100*f.share,
			f.idle.Round(10*time.Millisecond), limited, f.most429, 100*f.worst, errs, glCols, targetVerdict(ok))
	}
	fmt.Fprintf(b.out, "\n(tier 0 calls: the PTU's 200s; possible: the quota of the whole windows the run's time holds back to back from its first call,\n"+
		"and of its last part window the calls the run made in that time; share: tier 0 calls over possible; idle between: the time from\n"+
		"a window's end to the next window's first call, summed; most 429s per window: the most the PTU answered in one window, each a\n"+
		"client's 429, as gecholog never retries; worst window: the fewest calls a whole window served, over the quota)\n")
	if gl != nil {
		fmt.Fprintf(b.out, "(429s: those the clients got from gl; errors: calls without an answer or with another status; to ingress: calls gl sent\n"+
			"to the ingress router's own upstream, its request context unanswered in time; gl unanswered: the request and response\n"+
			"contexts gl logged as failed, each a processor call without an answer within its timeout)\n")
	}
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
