package main

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/gecholog"
	"github.com/gecholog/broker/kv"
)

// scale starts a replica with many pools and routers against a bucket
// that already holds a record for each router.
func (b *bench) scale(ctx context.Context) error {
	o := b.o
	pools := benchPools(o.pools, o.routers)
	nc, err := b.connect()
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	store, err := kv.Open(ctx, js, kv.Config{Bucket: b.bucket, Owner: "bench", Linger: 2 * time.Minute})
	if err != nil {
		return err
	}
	// Half of each pool disabled, the other half with the memo a router
	// that recovered leaves: every key has a record to load.
	now := time.Now()
	live := 0
	for _, p := range pools {
		for j, r := range p.Routers {
			rec := broker.Record{Router: r.Path, Status: 502, Reason: "egress_status_code 502", At: now, By: "bench", Level: 1}
			if j < len(p.Routers)/2 {
				rec.Until = now.Add(10 * time.Minute)
				_, err = store.Update(ctx, rec, 0)
				live++
			} else {
				rec.Ended = now
				_, err = store.Release(ctx, rec, 0)
			}
			if err != nil {
				store.Close()
				return fmt.Errorf("write record %s: %w", r.Path, err)
			}
		}
	}
	store.Close()
	fmt.Fprintf(b.out, "%d pools, %d routers; the bucket holds a record for each: %d disables, %d memos of recovered routers.\n",
		len(pools), o.routers, live, o.routers-live)
	fmt.Fprintf(b.out, "One replica at a time is started (connect, open the bucket, load every record, subscribe) and stopped.\n\n")

	var readies []time.Duration
	var m0, m1, m2 benchMemory
	var perCall time.Duration
	for i := 0; i < o.starts && ctx.Err() == nil; i++ {
		if i == 0 {
			m0 = readBenchMemory()
		}
		t0 := time.Now()
		f, err := b.startFleet(ctx, 1, pools, 10*time.Minute, b.replicaLog)
		if err != nil {
			return err
		}
		readies = append(readies, time.Since(t0))
		br := f.Replicas[0].Broker()
		if i == 0 {
			m1 = readBenchMemory()
			if got := br.Stats().Disabled; got != live {
				f.Stop()
				return fmt.Errorf("replica loaded %d disabled routers, want %d", got, live)
			}
			// A request context for each pool through NATS, then the
			// choice itself, in process.
			for _, p := range pools {
				m, err := nc.Request(b.subject, []byte(`{"gl_path":"`+p.Ingress+`"}`), time.Second)
				if err != nil {
					f.Stop()
					return fmt.Errorf("request context for %s: %w", p.Ingress, err)
				}
				if !bytes.HasPrefix(m.Data, []byte(`{"gl_path":"`+p.Ingress)) {
					f.Stop()
					return fmt.Errorf("request context for %s: reply %q", p.Ingress, m.Data)
				}
			}
			// The replica's own handler is not exported; one over the
			// same broker parses, chooses and answers alike.
			h := gecholog.NewHandler(br, nil)
			msg := []byte(`{"gl_path":"` + pools[0].Ingress + `"}`)
			const n = 200_000
			t := time.Now()
			for range n {
				h.Handle(msg)
			}
			perCall = time.Since(t) / n
			m2 = readBenchMemory()
		}
		if err := f.Stop(); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	sorted := slices.Clone(readies)
	slices.Sort(sorted)
	med := sorted[len(sorted)/2]
	fmt.Fprintf(b.out, "start to ready: %s (first), median %s, max %s over %d starts (target ≤ 500ms: %s)\n",
		fmtLatency(readies[0]), fmtLatency(med), fmtLatency(sorted[len(sorted)-1]), len(readies), targetVerdict(sorted[len(sorted)-1] <= 500*time.Millisecond))
	fmt.Fprintf(b.out, "choice in a pool of %d, in process: %v per request context (Handle)\n\n", len(pools[0].Routers), perCall)
	fmt.Fprintf(b.out, "memory of the process (the server, this program and the replica), after a collection:\n")
	fmt.Fprintf(b.out, "%-34s %12s %12s %11s\n", "", "live heap", "RSS", "goroutines")
	for _, s := range []struct {
		name string
		m    benchMemory
	}{{"before the replica", m0}, {"replica ready", m1}, {"after 200,000 calls", m2}} {
		fmt.Fprintf(b.out, "%-34s %12s %12s %11d\n", s.name, fmtMB(s.m.heap), fmtMB(s.m.rss), s.m.gors)
	}
	fmt.Fprintf(b.out, "the replica's share (after the calls minus before): heap %s, RSS %s (target ≤ 50 MB: %s)\n",
		fmtMBDelta(m0.heap, m2.heap), fmtMBDelta(m0.rss, m2.rss), targetVerdict(int64(m2.rss)-int64(m0.rss) <= 50<<20 && int64(m2.heap)-int64(m0.heap) <= 50<<20))
	fmt.Fprintf(b.out, "(the deltas include the server's side of the replica's connection and watcher, so they overstate the replica)\n")
	return nil
}
