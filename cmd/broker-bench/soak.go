package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/gecholog/broker/broker"
)

// soak runs gecholog-style calls at a fixed rate against three replicas,
// with one router failing a share of its calls.
func (b *bench) soak(ctx context.Context) error {
	o := b.o
	const failing = "/azure/dud/"
	f, err := b.startFleet(ctx, o.replicas, broker.DefaultPools(), o.disable, b.replicaLog)
	if err != nil {
		return err
	}
	defer f.Stop()
	conns, closeConns, err := b.connectN(o.conns)
	if err != nil {
		return err
	}
	defer closeConns()

	fmt.Fprintf(b.out, "%d replicas; %d gecholog calls per second for %v, each a request context then a response context;\n", o.replicas, o.rate, o.duration)
	fmt.Fprintf(b.out, "%s fails %.0f%% of its calls (502); disabled time %v; a call unanswered within %v is an error.\n\n", failing, 100*o.fail, o.disable, o.timeout)
	start := readBenchMemory()

	members := map[string]bool{}
	for _, r := range broker.DefaultPools()[0].Routers {
		members[r.Path] = true
	}
	total := min(int(float64(o.rate)*o.duration.Seconds()), o.maxCalls)
	workers := min(max(o.rate/50, 8), 256)
	jobs := make(chan struct{}, workers)
	var (
		mu               sync.Mutex
		reqLat, respLat  []time.Duration
		timeouts, wrong  int
		behind           int
		chosen           = map[string]int{}
		failed, answered int
	)
	var wg sync.WaitGroup
	for w := range workers {
		nc := conns[w%len(conns)]
		rng := rand.New(rand.NewPCG(uint64(w), 42))
		wg.Go(func() {
			for range jobs {
				t0 := time.Now()
				m, err := nc.Request(b.subject, []byte(`{"gl_path":"/azure/"}`), o.timeout)
				d1 := time.Since(t0)
				var r struct {
					GLPath string `json:"gl_path"`
				}
				if err == nil && (json.Unmarshal(m.Data, &r) != nil || !members[r.GLPath]) {
					err = errWrongReply
				}
				if err != nil {
					mu.Lock()
					reqLat = append(reqLat, d1)
					if errors.Is(err, errWrongReply) {
						wrong++
					} else {
						timeouts++
					}
					mu.Unlock()
					continue
				}
				status := 200
				if r.GLPath == failing && rng.Float64() < o.fail {
					status = 502
				}
				resp := fmt.Appendf(nil, `{"gl_path":%q,"egress_status_code":%d,"inbound_headers":{"Content-Type":["application/json"]}}`, r.GLPath, status)
				t1 := time.Now()
				m, err = nc.Request(b.subject, resp, o.timeout)
				d2 := time.Since(t1)
				mu.Lock()
				chosen[r.GLPath]++
				if status != 200 {
					failed++
				}
				reqLat = append(reqLat, d1)
				switch {
				case err != nil:
					timeouts++
				case len(m.Data) != 0:
					wrong++
				default:
					answered++
				}
				respLat = append(respLat, d2)
				mu.Unlock()
			}
		})
	}
	// The pacer keeps to the schedule; a call that finds every worker
	// busy is counted as behind and made when one is free.
	t0 := time.Now()
	every := time.Duration(float64(time.Second) / float64(o.rate))
	for i := 0; i < total && ctx.Err() == nil; i++ {
		if d := time.Until(t0.Add(time.Duration(i) * every)); d > 0 {
			time.Sleep(d)
		}
		select {
		case jobs <- struct{}{}:
		default:
			behind++
			jobs <- struct{}{}
		}
	}
	close(jobs)
	wg.Wait()
	elapsed := time.Since(t0)
	if ctx.Err() != nil {
		return nil
	}
	end := readBenchMemory()

	slices.Sort(reqLat)
	slices.Sort(respLat)
	var transitions, disables uint64
	for _, r := range f.Replicas {
		for _, t := range r.Broker().Stats().Transitions {
			transitions += t.N
			if t.Router == failing && t.To == "disabled" {
				disables += t.N
			}
		}
	}
	errs := timeouts + wrong
	fmt.Fprintf(b.out, "calls %d in %v (%.0f/s), %d answered in full; calls that waited for a free worker %d\n",
		total, elapsed.Round(time.Millisecond), float64(total)/elapsed.Seconds(), answered, behind)
	routers := make([]string, 0, len(chosen))
	for r := range chosen {
		routers = append(routers, r)
	}
	slices.Sort(routers)
	fmt.Fprintf(b.out, "chosen:")
	for _, r := range routers {
		fmt.Fprintf(b.out, " %s %d", r, chosen[r])
	}
	fmt.Fprintf(b.out, "; failures reported %d\n", failed)
	fmt.Fprintf(b.out, "%s disabled %d times in the replicas' views (phase changes in all: %d), KV writes %d\n\n", failing, disables, transitions, kvWrites(f))
	fmt.Fprintf(b.out, "%-26s %10s %10s %10s %10s\n", "reply time", "p50", "p99", "p99.9", "max")
	for _, s := range []struct {
		name string
		lat  []time.Duration
	}{{"request context", reqLat}, {"response context", respLat}} {
		r := benchResult{lat: s.lat}
		fmt.Fprintf(b.out, "%-26s %10s %10s %10s %10s\n", s.name, fmtLatency(r.pct(0.5)), fmtLatency(r.pct(0.99)), fmtLatency(r.pct(0.999)), fmtLatency(r.pct(1)))
	}
	fmt.Fprintf(b.out, "\nmemory of the process (server, replicas and callers), after a collection:\n")
	fmt.Fprintf(b.out, "%-10s %12s %12s %11s\n", "", "live heap", "RSS", "goroutines")
	fmt.Fprintf(b.out, "%-10s %12s %12s %11d\n", "start", fmtMB(start.heap), fmtMB(start.rss), start.gors)
	fmt.Fprintf(b.out, "%-10s %12s %12s %11d\n", "end", fmtMB(end.heap), fmtMB(end.rss), end.gors)
	fmt.Fprintf(b.out, "(the end includes this program's own latency samples, %s)\n", fmtMB(uint64(8*(cap(reqLat)+cap(respLat)))))
	fmt.Fprintf(b.out, "\nbroker errors %d: timeouts %d, wrong replies %d (target 0: %s)\n", errs, timeouts, wrong, targetVerdict(errs == 0))
	return nil
}
