package main

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/standin"
)

// strategies is the throughput mode for every strategy: three replicas
// serving a pool of each strategy, against three no-op responders (the
// floor), in turns. So that each strategy reads real statistics, the
// replicas hear a transaction log all along (every router, each priced,
// with a latency, rate-limit headroom and tokens), and the request
// contexts, never reported, leave calls in flight.
func (b *bench) strategies(ctx context.Context) error {
	o := b.o
	names := broker.Strategies()
	slices.SortStableFunc(names, func(a, b string) int { // random first: the others are read beside it
		if a == broker.DefaultStrategy {
			return -1
		}
		if b == broker.DefaultStrategy {
			return 1
		}
		return 0
	})
	var pools []broker.Pool
	for _, s := range names {
		p := pool(strings.ReplaceAll(s, "-", ""), s, "a", "b", "c") // a path holds letters and digits
		if s == broker.SessionsStrategy {
			p.Affinity.Session = true // its only pools; every call here is a conversation's first
		}
		for i := range p.Routers { // cost prices every router
			x := float64(i + 1)
			p.Routers[i].Price = &broker.Price{Input: x, CachedInput: x / 2, Output: 4 * x}
		}
		pools = append(pools, p)
	}
	stopNoop, err := b.startNoop(o.replicas)
	if err != nil {
		return err
	}
	defer stopNoop()
	l, err := b.startLab(ctx, pools, nil, 0)
	if err != nil {
		return err
	}
	defer l.close()
	conns, closeConns, err := b.connectN(o.conns)
	if err != nil {
		return err
	}
	defer closeConns()
	stopLog := b.transactionLog(ctx, l, pools, 500)
	defer stopLog()

	conditions := []string{"no-op"}
	calls := map[string]func(*nats.Conn) error{"no-op": b.request(b.noop, []byte(`{"gl_path":"/azure/"}`), noReply)}
	for _, p := range pools {
		conditions = append(conditions, p.Strategy)
		prefix := []byte(`{"gl_path":"` + p.Ingress)
		calls[p.Strategy] = b.request(b.subject, []byte(`{"gl_path":"`+p.Ingress+`"}`), func(data []byte) bool {
			return bytes.HasPrefix(data, prefix) && len(data) > len(prefix)+2 // one of the pool's routers
		})
	}
	run, settle := b.rounds()
	fmt.Fprintf(b.out, "%d callers on %d connections send request contexts with nc.Request, to %d no-op responders (the floor) and to\n", o.callers, o.conns, o.replicas)
	fmt.Fprintf(b.out, "%d replicas serving a pool of three routers for each strategy. The replicas hear 500 transactions/s on the logger\n", o.replicas)
	fmt.Fprintf(b.out, "subject all along (latency and rate-limit headers for every router), and the calls, never reported, stay in flight.\n")
	fmt.Fprintf(b.out, "Each condition is measured for %v in all, in %d runs of %v taken in turns (the order rotating each round),\n", o.duration, o.rounds, run)
	fmt.Fprintf(b.out, "after a %v warm-up of each and %v to settle before each run.\n\n", o.warmup, settle)
	for _, c := range conditions {
		b.closedLoop(ctx, conns, calls[c], o.warmup, 0)
	}
	results := map[string]*benchResult{}
	ratios := map[string][]float64{}
	for _, c := range conditions {
		results[c] = &benchResult{}
	}
	for round := 0; round < o.rounds && ctx.Err() == nil; round++ {
		got := map[string]benchResult{}
		for k := range conditions {
			c := conditions[(round+k)%len(conditions)]
			got[c] = b.closedLoop(ctx, conns, calls[c], settle, run)
			results[c].merge(got[c])
		}
		for _, c := range conditions[1:] {
			ratios[c] = append(ratios[c], got[c].rate()/got["no-op"].rate())
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	fmt.Fprintf(b.out, "%-26s %12s %10s %10s %10s %8s %10s %24s\n", "", "requests/s", "p50", "p99", "p99.9", "errors", "/ floor", "rounds: min / med / max")
	floor := results["no-op"]
	slices.Sort(floor.lat)
	b.row(fmt.Sprintf("no-op responder (%d)", o.replicas), *floor)
	var verdicts []string
	for _, c := range conditions[1:] {
		r := results[c]
		slices.Sort(r.lat)
		ratio := r.rate() / floor.rate()
		fmt.Fprintf(b.out, "%-26s %12.0f %10s %10s %10s %8d %10.3f %24s\n", c+" (3 replicas)", r.rate(), fmtLatency(r.pct(0.5)), fmtLatency(r.pct(0.99)),
			fmtLatency(r.pct(0.999)), r.errors, ratio, minMedMax(ratios[c]))
		verdicts = append(verdicts, fmt.Sprintf("%s / no-op: throughput %.3f, random's %.3f (target ≥ 0.95: %s)", c, ratio,
			results[broker.DefaultStrategy].rate()/floor.rate(), targetVerdict(ratio >= 0.95)))
	}
	fmt.Fprintln(b.out)
	for _, v := range verdicts {
		fmt.Fprintln(b.out, v)
	}
	return nil
}

// transactionLog publishes perSecond transactions on the logger subject,
// as gecholog does after each call, spread over every router of pools:
// each router with its own latency and rate-limit headers. The function it
// returns stops it and waits.
func (b *bench) transactionLog(ctx context.Context, l *lab, pools []broker.Pool, perSecond int) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(time.Second / time.Duration(perSecond))
		defer t.Stop()
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			p := pools[i%len(pools)]
			k := (i / len(pools)) % len(p.Routers)
			tx := standin.Transaction(standin.Finished{Ingress: p.Ingress, Router: p.Routers[k].Path,
				Start: time.Now().Add(-time.Duration(k+1) * 10 * time.Millisecond), Latency: time.Duration(k+1) * 10 * time.Millisecond,
				Headers: map[string]string{
					"x-ratelimit-limit-requests":     "1000",
					"x-ratelimit-remaining-requests": strconv.Itoa(200 + rand.IntN(800)),
					"x-ratelimit-reset-requests":     "1s",
				}, Payload: 1024})
			_ = l.nc.Publish(b.loggerSubject(), tx)
		}
	})
	return func() { cancel(); wg.Wait() }
}

// minMedMax is spread's figures alone, for a table's column.
func minMedMax(xs []float64) string {
	if len(xs) == 0 {
		return "none"
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return fmt.Sprintf("%.3f / %.3f / %.3f", s[0], s[len(s)/2], s[len(s)-1])
}
