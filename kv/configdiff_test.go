package kv_test

import (
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/kv"
)

// doc makes a document of pools, each "ingress=router:weight:priority,...".
func doc(disabled time.Duration, pools ...string) kv.FleetConfig {
	var ps []broker.Pool
	for _, p := range pools {
		ingress, routers, _ := strings.Cut(p, "=")
		pl := broker.Pool{Ingress: ingress}
		for _, r := range strings.Split(routers, ",") {
			f := strings.Split(r, ":")
			rt := broker.Router{Path: f[0], Weight: 1}
			if len(f) > 1 {
				rt.Weight = int(f[1][0] - '0')
			}
			if len(f) > 2 {
				rt.Priority = int(f[2][0] - '0')
			}
			pl.Routers = append(pl.Routers, rt)
		}
		ps = append(ps, pl)
	}
	return kv.NewFleetConfig(ps, broker.Policy{DisabledTime: disabled}, 0)
}

func TestTheDifferSaysEachChangeOnOneLine(t *testing.T) {
	base := doc(10*time.Minute, "/azure/=/azure/gpt4/,/azure/gpt35/")
	for _, tc := range []struct {
		name    string
		change  func(c *kv.FleetConfig)
		lines   []string // each change as diff prints it
		summary string   // all of them as history prints them
	}{
		{name: "nothing", change: func(c *kv.FleetConfig) {}, summary: "no change"},
		{name: "who and when are no change", change: func(c *kv.FleetConfig) {
			c.By, c.Source, c.At, c.Files = "bob", "elsewhere", time.Now(), []string{"x"}
		}, summary: "no change"},
		{name: "the same duration written otherwise", change: func(c *kv.FleetConfig) { c.Policy.DisabledTime = "600s" }, summary: "no change"},
		{name: "the default strategy named", change: func(c *kv.FleetConfig) { c.Pools[0].Strategy = "random" }, summary: "no change"},
		{
			name: "the brief's example",
			change: func(c *kv.FleetConfig) {
				c.Pools[0].Routers[0].Weight = 3
				c.Pools[0].Routers = append(c.Pools[0].Routers, kv.ConfigRouter{Path: "/azure/new/", Weight: 1})
				c.Policy.DisabledTime = (2 * time.Minute).String()
			},
			lines:   []string{"/azure/: weight /azure/gpt4/ 1→3", "/azure/: +/azure/new/", "policy.disabled_time 10m→2m"},
			summary: "/azure/: weight /azure/gpt4/ 1→3, +/azure/new/; policy.disabled_time 10m→2m",
		},
		{
			name: "a router removed, one added in a tier, a strategy",
			change: func(c *kv.FleetConfig) {
				c.Pools[0].Strategy = "least-busy"
				c.Pools[0].Routers = []kv.ConfigRouter{c.Pools[0].Routers[0], {Path: "/azure/ptu/", Weight: 2, Priority: 1}}
			},
			lines:   []string{"/azure/: strategy random→least-busy", "/azure/: -/azure/gpt35/", "/azure/: +/azure/ptu/ (weight 2, priority 1)"},
			summary: "/azure/: strategy random→least-busy, -/azure/gpt35/, +/azure/ptu/ (weight 2, priority 1)",
		},
		{
			name:    "a priority and the order of the routers",
			change:  func(c *kv.FleetConfig) { r := c.Pools[0].Routers; r[0], r[1] = r[1], r[0]; r[0].Priority = 1 },
			lines:   []string{"/azure/: priority /azure/gpt35/ 0→1", "/azure/: order /azure/gpt4/, /azure/gpt35/→/azure/gpt35/, /azure/gpt4/"},
			summary: "/azure/: priority /azure/gpt35/ 0→1, order /azure/gpt4/, /azure/gpt35/→/azure/gpt35/, /azure/gpt4/",
		},
		{
			name: "a pool added and the policy",
			change: func(c *kv.FleetConfig) {
				c.Pools = append(c.Pools, doc(time.Minute, "/openai/=/openai/a/,/openai/b/").Pools...)
				c.Policy.AllDisabled, c.Policy.Threshold, c.InFlightBound = "ingress", 3, "1h0m0s"
			},
			lines:   []string{"+pool /openai/ (random over /openai/a/, /openai/b/)", "policy.threshold 1→3", "policy.all_disabled panic→ingress", "inflight_bound 5m→1h"},
			summary: "+pool /openai/ (random over /openai/a/, /openai/b/); policy.threshold 1→3; policy.all_disabled panic→ingress; inflight_bound 5m→1h",
		},
		{
			name: "a price given, and a router added with one",
			change: func(c *kv.FleetConfig) {
				c.Pools[0].Routers[0].Price = kv.NewConfigPrice(&broker.Price{Input: 2.5, Output: 10, CachedInput: 1.25})
				c.Pools[0].Routers = append(c.Pools[0].Routers, kv.ConfigRouter{Path: "/azure/new/", Weight: 1, Price: &kv.ConfigPrice{Input: 3, Output: 15}})
			},
			lines: []string{"/azure/: price /azure/gpt4/ none→input 2.5 output 10 cached_input 1.25",
				"/azure/: +/azure/new/ (weight 1, price input 3 output 15 cached_input 3)"},
			summary: "/azure/: price /azure/gpt4/ none→input 2.5 output 10 cached_input 1.25, +/azure/new/ (weight 1, price input 3 output 15 cached_input 3)",
		},
		{
			name:    "a cached_input written out that is the input's",
			change:  func(c *kv.FleetConfig) { c.Pools[0].Routers[0].Price = &kv.ConfigPrice{Input: 3, Output: 15} },
			lines:   []string{"/azure/: price /azure/gpt4/ none→input 3 output 15 cached_input 3"},
			summary: "/azure/: price /azure/gpt4/ none→input 3 output 15 cached_input 3",
		},
		{
			name:    "a pool removed",
			change:  func(c *kv.FleetConfig) { *c = doc(10*time.Minute, "/openai/=/openai/a/") },
			lines:   []string{"-pool /azure/", "+pool /openai/ (random over /openai/a/)"},
			summary: "-pool /azure/; +pool /openai/ (random over /openai/a/)",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			is := is.New(t)
			b := base
			b.Pools = []kv.ConfigPool{base.Pools[0]}
			b.Pools[0].Routers = append([]kv.ConfigRouter(nil), base.Pools[0].Routers...)
			tc.change(&b)
			changes := kv.DiffConfig(base, b)
			var got []string
			for _, c := range changes {
				got = append(got, c.String())
			}
			is.Equal(got, tc.lines)                            // one line per change
			is.Equal(kv.SummarizeChanges(changes), tc.summary) // all of them on one line
		})
	}
}

func TestTheDifferSaysAPriceChangedOrTakenAway(t *testing.T) {
	is := is.New(t)
	a := doc(10*time.Minute, "/azure/=/azure/gpt4/,/azure/gpt35/")
	a.Pools[0].Routers[0].Price = kv.NewConfigPrice(&broker.Price{Input: 2.5, Output: 10, CachedInput: 1.25})
	a.Pools[0].Routers[1].Price = kv.NewConfigPrice(&broker.Price{Input: 0.5, Output: 1.5, CachedInput: 0.5})
	b := doc(10*time.Minute, "/azure/=/azure/gpt4/,/azure/gpt35/")
	b.Pools[0].Routers[0].Price = kv.NewConfigPrice(&broker.Price{Input: 2, Output: 8, CachedInput: 1})
	is.Equal(kv.SummarizeChanges(kv.DiffConfig(a, b)),
		"/azure/: price /azure/gpt4/ input 2.5 output 10 cached_input 1.25→input 2 output 8 cached_input 1, price /azure/gpt35/ input 0.5 output 1.5 cached_input 0.5→none")
	is.Equal(kv.DiffConfig(a, a), nil) // the same prices are no change
}

func TestTheDifferGivesStructuredChanges(t *testing.T) {
	is := is.New(t)
	a := doc(10*time.Minute, "/azure/=/azure/gpt4/")
	b := doc(10*time.Minute, "/azure/=/azure/gpt4/:3")
	is.Equal(kv.DiffConfig(a, b), []kv.ConfigChange{{Pool: "/azure/", Router: "/azure/gpt4/", Field: "weight", From: "1", To: "3"}}) // what --json prints
}
