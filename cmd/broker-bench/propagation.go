package main

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"runtime"
	"slices"
	"sync/atomic"
	"time"
)

// disableHook passes a replica's log on and reports each "router
// disabled" line, which the broker writes when it has taken a router out
// of its pools' choices, with the time the line was made.
type disableHook struct {
	slog.Handler
	replica string
	seen    chan<- disableSeen
	dropped *atomic.Int64
}

type disableSeen struct {
	replica string
	router  string
	at      time.Time
}

func (h disableHook) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn || h.Handler.Enabled(ctx, l)
}

func (h disableHook) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "router disabled" {
		r.Attrs(func(a slog.Attr) bool {
			if a.Key != "router" {
				return true
			}
			select {
			case h.seen <- disableSeen{h.replica, a.Value.String(), r.Time}:
			default:
				h.dropped.Add(1)
			}
			return false
		})
	}
	if h.Handler.Enabled(ctx, r.Level) {
		return h.Handler.Handle(ctx, r)
	}
	return nil
}

func (h disableHook) WithAttrs(as []slog.Attr) slog.Handler {
	h.Handler = h.Handler.WithAttrs(as)
	return h
}

func (h disableHook) WithGroup(name string) slog.Handler {
	h.Handler = h.Handler.WithGroup(name)
	return h
}

// propagation measures how long a failure report takes to reach every
// replica's choices.
func (b *bench) propagation(ctx context.Context) error {
	o := b.o
	pools := benchPools((o.trials+9)/10, o.trials)
	seen := make(chan disableSeen, o.trials*o.replicas+64)
	var dropped atomic.Int64
	f, err := b.startFleet(ctx, o.replicas, pools, time.Hour, func(id string) *slog.Logger {
		return slog.New(disableHook{Handler: b.replicaLog(id).Handler(), replica: id, seen: seen, dropped: &dropped})
	})
	if err != nil {
		return err
	}
	defer f.Stop()
	nc, err := b.connect()
	if err != nil {
		return err
	}
	defer nc.Close()

	fmt.Fprintf(b.out, "%d replicas, %d pools, %d trials; each trial sends one failure report (egress_status_code 502)\n", o.replicas, len(pools), o.trials)
	fmt.Fprintf(b.out, "for a router of its own through the queue group and waits for every replica to drop it.\n\n")
	var fromSend, fromFirst, confirmed, first []time.Duration
	lost := 0
	for t := 0; t < o.trials && ctx.Err() == nil; t++ {
		p := pools[t%len(pools)]
		router := p.Routers[t/len(pools)].Path
		report := fmt.Appendf(nil, `{"gl_path":%q,"egress_status_code":502}`, router)
		t0 := time.Now()
		if _, err := nc.Request(b.subject, report, time.Second); err != nil {
			return fmt.Errorf("trial %d: failure report: %w", t+1, err)
		}
		at := make(map[string]time.Time, o.replicas) // by replica
		lapsed := false
		deadline := time.NewTimer(5 * time.Second)
		for len(at) < o.replicas && !lapsed {
			select {
			case d := <-seen:
				if _, ok := at[d.replica]; d.router == router && !ok {
					at[d.replica] = d.at
				}
			case <-deadline.C:
				lapsed = true
			case <-ctx.Done():
				deadline.Stop()
				return nil
			}
		}
		deadline.Stop()
		if lapsed {
			lost++
			continue
		}
		// The broker logs the change once the pool's snapshot is
		// swapped; make sure no replica can still choose the router.
		for _, r := range f.Replicas {
			for slices.Contains(r.Broker().Routers(p.Ingress), router) {
				if time.Since(t0) > 5*time.Second {
					return fmt.Errorf("trial %d: a replica still chooses %s 5s after its failure report", t+1, router)
				}
				runtime.Gosched()
			}
		}
		done := time.Now()
		times := slices.Collect(maps.Values(at))
		lo, hi := slices.MinFunc(times, time.Time.Compare), slices.MaxFunc(times, time.Time.Compare)
		first = append(first, lo.Sub(t0))
		fromSend = append(fromSend, hi.Sub(t0))
		fromFirst = append(fromFirst, hi.Sub(lo))
		confirmed = append(confirmed, done.Sub(t0))
	}
	if ctx.Err() != nil {
		return nil
	}
	fmt.Fprintf(b.out, "%-58s %9s %9s %9s\n", "", "p50", "p99", "max")
	for _, s := range []struct {
		name string
		d    []time.Duration
	}{
		{"first replica drops it (from sending the report)", first},
		{"last replica drops it (from sending the report)", fromSend},
		{"last replica drops it (from the first replica dropping it)", fromFirst},
		{"checked with Routers() after the last drop (upper bound)", confirmed},
	} {
		slices.Sort(s.d)
		r := benchResult{lat: s.d}
		fmt.Fprintf(b.out, "%-58s %9s %9s %9s\n", s.name, fmtLatency(r.pct(0.5)), fmtLatency(r.pct(0.99)), fmtLatency(r.pct(1)))
	}
	r := benchResult{lat: fromSend}
	// A replica counts a write when the bucket has acknowledged it, which
	// may come after every replica has heard of it: count once all are done.
	_ = f.Stop()
	fmt.Fprintf(b.out, "\ntrials %d, not propagated within 5s %d, hook events dropped %d, KV writes %d (one per disable: %d)\n",
		len(fromSend)+lost, lost, dropped.Load(), kvWrites(f), len(fromSend)+lost)
	fmt.Fprintf(b.out, "last replica p99 %s (target ≤ 10ms: %s)\n", fmtLatency(r.pct(0.99)), targetVerdict(lost == 0 && r.pct(0.99) <= 10*time.Millisecond))
	return nil
}
