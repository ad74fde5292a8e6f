package main

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/standin"
)

// spillover measures priority tiers: a PTU deployment on tier 0 with a
// quota of Q calls per window, two pay-as-you-go deployments on tier 1
// without one, and a load of 2Q per window. Tier 0 should carry at least
// 90% of Q in each window, and the clients see at most one 429 per
// Retry-After: the one that tells the broker. Beside it, in the same run
// on deployments of their own: the same tiers with the headroom strategy,
// which reads the PTU's x-ratelimit-remaining-requests and moves the calls
// to tier 1 before the 429 (calls in flight when the quota runs out get a
// 429 each with random), and the same three routers in one tier chosen at
// random, as a pool without priorities is.
func (b *bench) spillover(ctx context.Context) error {
	o := b.o
	q, w := o.quota, o.window
	tiered := pool("tiered", "random", "ptu", "payg1", "payg2")
	tiered.Routers[1].Priority, tiered.Routers[2].Priority = 1, 1
	room := pool("room", "headroom", "ptu", "payg1", "payg2")
	room.Routers[1].Priority, room.Routers[2].Priority = 1, 1
	flat := pool("flat", "random", "ptu", "payg1", "payg2")
	epoch := time.Now() // the deployments' windows start here, and follow each other
	llms := map[string]*standin.LLM{}
	for _, p := range []broker.Pool{tiered, room, flat} {
		llms[p.Routers[0].Path] = &standin.LLM{Model: "gpt-4o (PTU)", Latency: standin.Uniform(20*time.Millisecond, 40*time.Millisecond),
			Quota: q, Window: w, Epoch: epoch}
		for _, r := range p.Routers[1:] {
			llms[r.Path] = &standin.LLM{Model: "gpt-4o (pay-as-you-go)", Latency: standin.Uniform(20*time.Millisecond, 40*time.Millisecond)}
		}
	}
	l, err := b.startLab(ctx, []broker.Pool{tiered, room, flat}, llms, 0)
	if err != nil {
		return err
	}
	defer l.close()
	rate := 2 * float64(q) / w.Seconds()
	windows := int(o.duration / w)
	fmt.Fprintf(b.out, "%d replicas. Pool %s: %s on tier 0 with a quota of %d calls per %v, %s and %s on tier 1 without one.\n",
		o.replicas, tiered.Ingress, tiered.Routers[0].Path, q, w, tiered.Routers[1].Path, tiered.Routers[2].Path)
	fmt.Fprintf(b.out, "Beside it, on deployments of their own: %s, the same tiers with the headroom strategy, and %s, all on one tier, random (a pool without priorities).\n", room.Ingress, flat.Ingress)
	fmt.Fprintf(b.out, "Each pool gets %.0f calls/s (2Q per window) at random arrivals for %d windows (%v); upstream latency 20-40ms.\n", rate, windows, time.Duration(windows)*w)
	b.compressed(fmt.Sprintf("the quota is %d calls per %v where the real APIs count per minute; Retry-After is whole seconds, as they send it", q, w))
	fmt.Fprintln(b.out)

	// The load starts at a window's start, so that every window counted
	// is whole: the first after the replicas are ready.
	for epoch.Before(time.Now()) {
		epoch = epoch.Add(w)
	}
	select {
	case <-ctx.Done():
		return nil
	case <-time.After(time.Until(epoch)):
	}
	logs := map[string]*callLog{tiered.Ingress: {}, room.Ingress: {}, flat.Ingress: {}}
	late := l.drive(ctx, time.Duration(windows)*w, map[string]float64{tiered.Ingress: rate, room.Ingress: rate, flat.Ingress: rate}, logs)
	if ctx.Err() != nil {
		return nil
	}
	fmt.Fprintf(b.out, "%-26s %8s %8s %14s %14s %8s %18s %10s\n", "", "calls", "errors", "tier 0 / Q", "worst window", "429s", "most per window", "tier 1")
	verdicts := []string{}
	for _, p := range []broker.Pool{tiered, room, flat} {
		calls := logs[p.Ingress].calls()
		ptu := llms[p.Routers[0].Path]
		var sum, worst float64 = 0, -1
		n := 0
		for _, wc := range ptu.Windows() {
			if wc.Start.Before(epoch) || wc.Start.Add(w).After(epoch.Add(time.Duration(windows)*w)) {
				continue // not within the load
			}
			share := float64(wc.Served) / float64(q)
			sum += share
			if worst < 0 || share < worst {
				worst = share
			}
			n++
		}
		mean := sum / float64(max(n, 1))
		limited := byRouter(calls, 429)
		total429 := 0
		for _, c := range limited {
			total429 += c
		}
		most, over, spanned := perRetryAfter(calls)
		spilled := 0
		for _, r := range p.Routers[1:] {
			spilled += byRouter(calls, 0)[r.Path]
		}
		name := p.Ingress + " (tiers)"
		switch p.Ingress {
		case room.Ingress:
			name = p.Ingress + " (tiers, headroom)"
		case flat.Ingress:
			name = p.Ingress + " (random)"
		}
		fmt.Fprintf(b.out, "%-26s %8d %8d %14.3f %14.3f %8d %18d %10d\n", name, len(calls), logs[p.Ingress].errors, mean, max(worst, 0), total429, most, spilled)
		if p.Ingress == tiered.Ingress {
			verdicts = append(verdicts,
				fmt.Sprintf("tiers: tier 0 carries %.1f%% of Q per window on average, the worst window %.1f%% (target ≥ 90%%: %s)", 100*mean, 100*max(worst, 0), targetVerdict(mean >= 0.9)),
				fmt.Sprintf("tiers: clients saw %d 429s, at most %d in one Retry-After window (within %v of its first), %d windows with more than one (target ≤ 1: %s)",
					total429, most, fmtLatency(spanned), over, targetVerdict(most <= 1)))
		}
		if p.Ingress == room.Ingress {
			verdicts = append(verdicts,
				fmt.Sprintf("tiers with headroom: tier 0 carries %.1f%% of Q per window on average, the worst window %.1f%% (target ≥ 90%%: %s); clients saw %d 429s, at most %d in one Retry-After window (target ≤ 1: %s)",
					100*mean, 100*max(worst, 0), targetVerdict(mean >= 0.9), total429, most, targetVerdict(most <= 1)))
		}
	}
	fmt.Fprintf(b.out, "\n(tier 0 / Q: calls the PTU deployment served per whole window of its quota, mean and worst; a Retry-After window is from a 429\n"+
		"to the time it says; tier 1: calls that went to the pay-as-you-go routers; calls that waited to start: %d)\n", late)
	for _, v := range verdicts {
		fmt.Fprintln(b.out, v)
	}
	return nil
}

// perRetryAfter groups the 429s the clients saw into Retry-After windows,
// each opened by a 429 not within an earlier one and lasting what it said,
// and says the most in one window, the time from its first 429 to its
// last, and how many windows had more than one.
func perRetryAfter(calls []standin.Result) (most, over int, spanned time.Duration) {
	var first, until time.Time
	n := 0
	for _, r := range calls {
		if r.Status != 429 {
			continue
		}
		if r.Stop.Before(until) {
			n++
		} else {
			if n > 1 {
				over++
			}
			secs, _ := strconv.Atoi(r.Headers.Get("Retry-After"))
			first, until, n = r.Stop, r.Stop.Add(time.Duration(max(secs, 1))*time.Second), 1
		}
		if n > most {
			most, spanned = n, r.Stop.Sub(first)
		}
	}
	if n > 1 {
		over++
	}
	return most, over, spanned
}
