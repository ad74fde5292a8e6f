package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// benchResult is what a measured run saw.
type benchResult struct {
	calls  int             // answered as expected
	errors int             // no reply in time, or a wrong one
	window time.Duration   // the measured time
	lat    []time.Duration // of every call, sorted
}

func (r benchResult) rate() float64 { return float64(r.calls) / r.window.Seconds() }

func (r benchResult) pct(q float64) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	return r.lat[min(int(q*float64(len(r.lat))), len(r.lat)-1)]
}

func (r *benchResult) merge(o benchResult) {
	r.calls += o.calls
	r.errors += o.errors
	r.window += o.window
	r.lat = append(r.lat, o.lat...)
}

// closedLoop runs b.o.callers callers, each making calls one after the
// other, spread over conns: for settle unmeasured, then for window. call
// makes one call and says whether it was answered as expected.
func (b *bench) closedLoop(ctx context.Context, conns []*nats.Conn, call func(*nats.Conn) error, settle, window time.Duration) benchResult {
	start := time.Now()
	from := start.Add(settle)
	end := from.Add(window)
	per := max(b.o.maxCalls/b.o.callers, 1)
	parts := make([]benchResult, b.o.callers)
	var wg sync.WaitGroup
	for i := range b.o.callers {
		nc := conns[i%len(conns)]
		r := &parts[i]
		wg.Go(func() {
			for n := 0; n < per && ctx.Err() == nil; {
				t0 := time.Now()
				if !t0.Before(end) {
					return
				}
				err := call(nc)
				d := time.Since(t0)
				if t0.Before(from) {
					continue
				}
				n++
				// A call that timed out counts in the latencies too, at the
				// time it was given up on, so it cannot flatter the tail.
				r.lat = append(r.lat, d)
				if err != nil {
					r.errors++
					continue
				}
				r.calls++
			}
		})
	}
	wg.Wait()
	var all benchResult
	for _, p := range parts {
		all.merge(p)
	}
	all.window = min(max(time.Since(from), 0), window)
	slices.Sort(all.lat)
	return all
}

// rounds splits the measured time into runs: each condition gets
// -duration in all, in -rounds runs, with a short settle before each.
func (b *bench) rounds() (run, settle time.Duration) {
	return max(b.o.duration/time.Duration(b.o.rounds), time.Millisecond), min(b.o.warmup, 100*time.Millisecond)
}

// spread summarises per-round ratios: min, median and max.
func spread(xs []float64) string {
	if len(xs) == 0 {
		return "none"
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return fmt.Sprintf("min %.3f, median %.3f, max %.3f", s[0], s[len(s)/2], s[len(s)-1])
}

var errWrongReply = errors.New("wrong reply")

// request sends a request context and checks the reply: empty for the
// no-op, a router of the pool for the broker.
func (b *bench) request(subject string, msg []byte, valid func([]byte) bool) func(*nats.Conn) error {
	return func(nc *nats.Conn) error {
		m, err := nc.Request(subject, msg, b.o.timeout)
		if err != nil {
			return err
		}
		if !valid(m.Data) {
			return errWrongReply
		}
		return nil
	}
}

func isDefaultRouter(data []byte) bool {
	return bytes.HasPrefix(data, []byte(`{"gl_path":"/azure/`)) && len(data) > len(`{"gl_path":"/azure/"}`)
}

func noReply(data []byte) bool { return len(data) == 0 }

func (b *bench) row(name string, r benchResult) {
	fmt.Fprintf(b.out, "%-26s %12.0f %10s %10s %10s %8d\n", name, r.rate(), fmtLatency(r.pct(0.5)), fmtLatency(r.pct(0.99)), fmtLatency(r.pct(0.999)), r.errors)
}

func targetVerdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

// fmtLatency formats a duration for the reports: microseconds below a
// millisecond, else milliseconds.
func fmtLatency(d time.Duration) string {
	if d < time.Millisecond {
		return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond))
	}
	return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
}
