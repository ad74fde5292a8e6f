package main

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/gecholog/broker/broker"
)

// throughput compares three replicas with three no-op responders.
func (b *bench) throughput(ctx context.Context) error {
	o := b.o
	stopNoop, err := b.startNoop(o.replicas)
	if err != nil {
		return err
	}
	defer stopNoop()
	pools := broker.DefaultPools()
	pools[0].Strategy = o.strategy
	f, err := b.startFleet(ctx, o.replicas, pools, 10*time.Minute, b.replicaLog)
	if err != nil {
		return err
	}
	defer f.Stop()
	conns, closeConns, err := b.connectN(o.conns)
	if err != nil {
		return err
	}
	defer closeConns()

	msg := []byte(`{"gl_path":"/azure/"}`)
	noopCall := b.request(b.noop, msg, noReply)
	brokerCall := b.request(b.subject, msg, isDefaultRouter)
	run, settle := b.rounds()
	fmt.Fprintf(b.out, "The pool %s, strategy %s. %d callers on %d connections send request contexts %s with nc.Request.\n",
		pools[0].Ingress, pools[0].StrategyName(), o.callers, o.conns, msg)
	fmt.Fprintf(b.out, "Each is measured for %v in all, in %d runs of %v taken in turns (no-op first in odd rounds, the broker in even ones),\n", o.duration, o.rounds, run)
	fmt.Fprintf(b.out, "after a %v warm-up of each and %v to settle before each run.\n\n", o.warmup, settle)
	b.closedLoop(ctx, conns, noopCall, o.warmup, 0)
	b.closedLoop(ctx, conns, brokerCall, o.warmup, 0)
	var noop, brk benchResult
	var rates, p99s []float64
	// Turns, so that a machine that speeds up or slows down during the run
	// favours neither.
	for round := 1; round <= o.rounds && ctx.Err() == nil; round++ {
		var n, r benchResult
		if round%2 == 1 {
			n = b.closedLoop(ctx, conns, noopCall, settle, run)
			r = b.closedLoop(ctx, conns, brokerCall, settle, run)
		} else {
			r = b.closedLoop(ctx, conns, brokerCall, settle, run)
			n = b.closedLoop(ctx, conns, noopCall, settle, run)
		}
		rates = append(rates, r.rate()/n.rate())
		p99s = append(p99s, float64(r.pct(0.99))/float64(n.pct(0.99)))
		noop.merge(n)
		brk.merge(r)
	}
	if ctx.Err() != nil {
		return nil
	}
	slices.Sort(noop.lat)
	slices.Sort(brk.lat)
	fmt.Fprintf(b.out, "%-26s %12s %10s %10s %10s %8s\n", "", "requests/s", "p50", "p99", "p99.9", "errors")
	b.row(fmt.Sprintf("no-op responder (%d)", o.replicas), noop)
	b.row(fmt.Sprintf("broker (%d replicas)", o.replicas), brk)
	fmt.Fprintln(b.out)
	tr := brk.rate() / noop.rate()
	lr := float64(brk.pct(0.99)) / float64(noop.pct(0.99))
	fmt.Fprintf(b.out, "broker / no-op, round by round: throughput %s; p99 %s\n", spread(rates), spread(p99s))
	fmt.Fprintf(b.out, "broker / no-op: throughput %.3f (target ≥ 0.95: %s), p99 %.3f (target ≤ 1.20: %s)\n",
		tr, targetVerdict(tr >= 0.95), lr, targetVerdict(lr <= 1.20))
	return nil
}
