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
