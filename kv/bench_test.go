package kv_test

// Benchmarks of what a disable costs in the bucket, on an embedded
// nats-server over loopback:
//
//	go test -run '^$' -bench . -benchmem ./kv

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/kv"
)

func benchRecord(router string) broker.Record {
	now := time.Now()
	return broker.Record{Router: router, Status: 502, Reason: "egress_status_code 502",
		At: now, Until: now.Add(10 * time.Minute), By: "broker-7f9c:1", Level: 1}
}

func benchOpen(b *testing.B) *kv.Store {
	b.Helper()
	s, err := kv.Open(context.Background(), natstest.JetStream(b, natstest.Start(b)),
		kv.Config{Bucket: "bench", Owner: "bench", Linger: 2 * time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(s.Close)
	return s
}

func BenchmarkRecordEncode(b *testing.B) {
	r := benchRecord("/azure/dud/")
	for b.Loop() {
		if _, err := kv.Encode(r); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRecordDecode(b *testing.B) {
	v, err := kv.Encode(benchRecord("/azure/dud/"))
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := kv.Decode("/azure/dud/", v); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWrite is what a replica does to disable a router: read the
// key's latest revision, then write with compare-and-set and a TTL.
func BenchmarkWrite(b *testing.B) {
	s := benchOpen(b)
	ctx := context.Background()
	r := benchRecord("/azure/dud/")
	for b.Loop() {
		e, _, err := s.Latest(ctx, r.Router)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := s.Update(ctx, r, e.Revision); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWatchDelivery is the time from a write to another watcher
// hearing it: the part of a disable's propagation the bucket adds.
func BenchmarkWatchDelivery(b *testing.B) {
	s := benchOpen(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	heard := make(chan uint64, 1)
	stop, err := s.Watch(ctx, func(ev broker.Event) {
		select {
		case heard <- ev.Revision:
		case <-ctx.Done(): // the benchmark is over; let stop return
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(stop)
	r := benchRecord("/azure/dud/")
	var rev uint64
	for b.Loop() {
		var err error
		if rev, err = s.Update(ctx, r, rev); err != nil {
			b.Fatal(err)
		}
		select {
		case got := <-heard:
			if got != rev {
				b.Fatalf("heard revision %d, wrote %d", got, rev)
			}
		case <-time.After(5 * time.Second):
			b.Fatal("write not heard within 5s")
		}
	}
}

// BenchmarkLoad1000 is a replica's startup view: opening the bucket and
// watching it until all of 1,000 records are delivered.
func BenchmarkLoad1000(b *testing.B) {
	srv := natstest.Start(b)
	js := natstest.JetStream(b, srv)
	ctx := context.Background()
	s, err := kv.Open(ctx, js, kv.Config{Bucket: "bench", Owner: "bench", Linger: 2 * time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	for i := range 1000 {
		if _, err := s.Update(ctx, benchRecord(fmt.Sprintf("/p%d/r%d/", i/10, i%10)), 0); err != nil {
			b.Fatal(err)
		}
	}
	s.Close()
	for b.Loop() {
		wctx, cancel := context.WithCancel(ctx)
		st, err := kv.Open(wctx, js, kv.Config{Bucket: "bench", Owner: "bench"})
		if err != nil {
			b.Fatal(err)
		}
		var n atomic.Int64
		stop, err := st.Watch(wctx, func(broker.Event) { n.Add(1) })
		if err != nil {
			b.Fatal(err)
		}
		stop()
		cancel()
		st.Close()
		if n.Load() != 1000 {
			b.Fatalf("loaded %d records, want 1000", n.Load())
		}
	}
}
