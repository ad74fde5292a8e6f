package broker_test

// Benchmarks of the decision core alone, without gecholog's message
// around it (the gecholog package benchmarks the whole message path):
//
//	go test -run '^$' -bench . -benchmem ./broker

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/gecholog/broker/broker"
)

// BenchmarkChoose is the choice for a request context. Its cost must not
// depend on how many of the pool's routers are disabled.
func BenchmarkChoose(b *testing.B) {
	for _, tc := range []struct{ routers, disabled int }{
		{3, 0}, {1000, 0}, {1000, 500}, {1000, 999},
	} {
		b.Run(fmt.Sprintf("routers=%d/disabled=%d", tc.routers, tc.disabled), func(b *testing.B) {
			p := broker.Pool{Ingress: "/p/"}
			for i := range tc.routers {
				p.Routers = append(p.Routers, broker.Router{Path: fmt.Sprintf("/p/r%d/", i), Weight: 1})
			}
			br, err := broker.New(broker.Config{Pools: []broker.Pool{p}, Policy: broker.Policy{DisabledTime: time.Hour}})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { br.Close(context.Background()) })
			for _, r := range p.Routers[:tc.disabled] {
				br.Report([]byte(r.Path), 502, 0)
			}
			ingress := []byte(p.Ingress)
			for b.Loop() {
				if br.Choose(ingress) < 0 {
					b.Fatal("no router chosen")
				}
			}
		})
	}
}

// BenchmarkChooseSession is a keyed call's choice in a pool of three
// routers with "session" affinity: by the session's order, and for a
// session the transaction log told of (remembered, with 100,000 other
// sessions remembered), each call settled at once.
func BenchmarkChooseSession(b *testing.B) {
	for _, remembered := range []bool{false, true} {
		b.Run(fmt.Sprintf("remembered=%v", remembered), func(b *testing.B) {
			p := broker.Pool{Ingress: "/p/", Affinity: broker.Affinity{Session: true}, Routers: []broker.Router{
				{Path: "/p/a/", Weight: 1}, {Path: "/p/b/", Weight: 1}, {Path: "/p/c/", Weight: 1}}}
			br, err := broker.New(broker.Config{Pools: []broker.Pool{p}, Policy: broker.Policy{DisabledTime: time.Hour}})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { br.Close(context.Background()) })
			key := []byte("AAA00001_1696681410696216000_3")
			if remembered {
				for i := range broker.MaxRemembered {
					br.Remember(fmt.Appendf(nil, "AAA00001_%d_1", i), []byte("/p/b/"))
				}
				br.Remember(key, []byte("/p/c/"))
			}
			ingress := []byte(p.Ingress)
			var paths [][]byte
			for _, m := range br.Members() {
				paths = append(paths, []byte(m))
			}
			for b.Loop() {
				br.Report(paths[br.ChooseSession(ingress, key)], 200, 0)
			}
		})
	}
}

// BenchmarkChooseHeadroom is a call's choice in issue 23's tiers, a PTU
// on tier 0 whose upstream said what is left (headroom), on a replica
// telling two others its counts: the choice notes its time, and reads
// what is left less its own choices since and its share of the window.
func BenchmarkChooseHeadroom(b *testing.B) {
	br, err := broker.New(broker.Config{ID: "a", Pools: ptuPool(), Policy: broker.Policy{DisabledTime: time.Hour}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { br.Close(context.Background()) })
	br.Merge("b", time.Now(), nil)
	br.Merge("c", time.Now(), nil)
	sent := time.Now()
	if err := br.Finished([]byte("/azure/ptu/"), time.Millisecond, left(1<<40, sent, sent.Add(time.Hour))); err != nil {
		b.Fatal(err)
	}
	ingress := []byte("/azure/")
	for b.Loop() {
		if br.Choose(ingress) < 0 {
			b.Fatal("no router chosen")
		}
	}
}
