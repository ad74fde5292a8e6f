package broker_test

import (
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
)

func pools(ingress string, routers ...string) []broker.Pool {
	p := broker.Pool{Ingress: ingress}
	for _, r := range routers {
		p.Routers = append(p.Routers, broker.Router{Path: r, Weight: 1})
	}
	return []broker.Pool{p}
}

func TestReconfigureRefusesWhatNewRefusesAndChangesNothing(t *testing.T) {
	is := is.New(t)
	b, _ := newBroker(t, broker.Config{})
	before := b.Routers("/azure/")
	pol := broker.Policy{DisabledTime: time.Hour}
	for name, c := range map[string]struct {
		pools []broker.Pool
		pol   broker.Policy
		bound time.Duration
		want  string
	}{
		"no pools":       {nil, pol, 0, "no pools"},
		"empty pool":     {[]broker.Pool{{Ingress: "/a/"}}, pol, 0, "has no routers"},
		"bad weight":     {[]broker.Pool{{Ingress: "/a/", Routers: []broker.Router{{Path: "/a/x/", Weight: 0}}}}, pol, 0, "weight 0"},
		"bad strategy":   {[]broker.Pool{{Ingress: "/a/", Strategy: "nope", Routers: []broker.Router{{Path: "/a/x/", Weight: 1}}}}, pol, 0, "nope"},
		"no disable":     {pools("/a/", "/a/x/"), broker.Policy{}, 0, "disabled"},
		"bound too long": {pools("/a/", "/a/x/"), pol, 48 * time.Hour, "in-flight bound"},
	} {
		err := b.Reconfigure(c.pools, c.pol, c.bound)
		is.True(err != nil)                                             // refused: name
		is.True(strings.Contains(strings.ToLower(err.Error()), c.want)) // says why: name
		_ = name
		is.Equal(b.Routers("/azure/"), before) // nothing changed
	}
}

func TestReconfigureKeepsTheViewOfRoutersInBothAndChoosesAnAddedOneAtOnce(t *testing.T) {
	is := is.New(t)
	store := newFakeStore()
	b, _ := newBroker(t, broker.Config{Store: store})
	gpt4 := []byte("/azure/gpt4/")
	for range 3 {
		b.Choose([]byte("/azure/"))
	}
	b.Finished(gpt4, 200*time.Millisecond, nil)
	report(b, "/azure/dud/", 502) // disables dud
	waitFor(t, func() bool { _, live := store.entry("/azure/dud/"); return live })
	is.Equal(b.Phase("/azure/dud/"), broker.Disabled)

	// A router the store holds disabled comes back disabled once added.
	rec := broker.Record{Router: "/azure/new/", Status: 500, At: time.Now(), Until: time.Now().Add(time.Hour), By: "replica-2"}
	store.mu.Lock()
	store.put(rec, false)
	store.mu.Unlock()

	next := []broker.Pool{{Ingress: "/azure/", Routers: []broker.Router{
		{Path: "/azure/gpt4/", Weight: 1}, {Path: "/azure/dud/", Weight: 1}, {Path: "/azure/fresh/", Weight: 1}, {Path: "/azure/new/", Weight: 1},
	}}}
	is.NoErr(b.Reconfigure(next, broker.Policy{DisabledTime: time.Minute}, 0))
	is.Equal(b.Phase("/azure/dud/"), broker.Disabled) // the view carried over
	var gpt4View broker.RouterView
	for _, v := range b.View(time.Now()) {
		if v.Router == "/azure/gpt4/" {
			gpt4View = v
		}
	}
	is.True(gpt4View.LatencyKnown)                                               // the latency carried over
	is.True(slices.Contains(b.Routers("/azure/"), "/azure/fresh/"))              // added, enabled
	waitFor(t, func() bool { return b.Phase("/azure/new/") == broker.Disabled }) // read from the store
	seen := map[string]bool{}
	for range 200 {
		seen[pick(b, "/azure/")] = true
	}
	is.True(seen["/azure/fresh/"])       // chosen at once
	is.True(!seen["/azure/gpt35turbo/"]) // removed: never chosen
	is.True(!seen["/azure/new/"])        // disabled in the store

	// A report of a removed router changes nothing and does not panic.
	report(b, "/azure/gpt35turbo/", 502)
	is.Equal(b.Phase("/azure/gpt35turbo/"), broker.Enabled)
	// The policy applies to new decisions: a disable now lasts a minute.
	report(b, "/azure/fresh/", 502)
	until := b.Until("/azure/fresh/")
	is.True(time.Until(until) <= time.Minute) // the new policy's disabled time
}

// What the strategies and the failure policy count of a router in both
// revisions carries over a change: calls in flight, headroom and the
// failures toward the threshold.
func TestReconfigureCarriesOverCallsInFlightHeadroomAndFailureCounts(t *testing.T) {
	is := is.New(t)
	pol := broker.Policy{DisabledTime: time.Minute, Threshold: 2}
	one := []broker.Pool{{Ingress: "/azure/", Strategy: "least-busy", Routers: []broker.Router{{Path: "/azure/a/", Weight: 1}}}}
	b, _ := newBroker(t, broker.Config{Store: newFakeStore(), Pools: one, Policy: pol})
	for range 3 {
		is.Equal(pick(b, "/azure/"), "/azure/a/")
	}
	limits := &broker.RateLimits{RemainingRequests: 5, LimitRequests: 100, RemainingTokens: -1, LimitTokens: -1, ResetRequests: time.Now().Add(time.Minute)}
	is.NoErr(b.Finished([]byte("/azure/a/"), 10*time.Millisecond, limits))
	report(b, "/azure/a/", 200) // the finished call's report: 2 in flight
	report(b, "/azure/a/", 502) // the first failure of the two the threshold asks for
	is.Equal(b.Phase("/azure/a/"), broker.Enabled)

	view := func() broker.RouterView {
		b.Refresh(time.Now())
		for _, v := range b.View(time.Now()) {
			if v.Router == "/azure/a/" {
				return v
			}
		}
		t.Fatal("no view of /azure/a/")
		return broker.RouterView{}
	}
	before := view()
	is.True(before.InFlight > 0 && before.HeadroomKnown) // something to carry over
	two := []broker.Pool{{Ingress: "/azure/", Strategy: "least-busy", Routers: []broker.Router{{Path: "/azure/a/", Weight: 1}, {Path: "/azure/b/", Weight: 1}}}}
	is.NoErr(b.Reconfigure(two, pol, 0))
	after := view()
	is.Equal(after.InFlight, before.InFlight)       // the calls in flight carried over
	is.True(after.HeadroomKnown)                    // the headroom too
	is.Equal(after.Headroom, before.Headroom)       // unchanged
	is.Equal(after.Latency, before.Latency)         // and the latency
	report(b, "/azure/a/", 502)                     // the second failure, after the change
	is.Equal(b.Phase("/azure/a/"), broker.Disabled) // counted with the first: the threshold is met
}

func TestARouterRemovedAndAddedAgainKeepsItsIDAndTheHandlerAnswersForIt(t *testing.T) {
	is := is.New(t)
	b, _ := newBroker(t, broker.Config{})
	before := b.Members()
	pol := broker.Policy{DisabledTime: time.Hour}
	is.NoErr(b.Reconfigure(pools("/azure/", "/azure/other/"), pol, 0))
	is.NoErr(b.Reconfigure(broker.DefaultPools(), pol, 0))
	after := b.Members()
	is.Equal(after[:len(before)], before) // ids never change
	is.Equal(after[len(before)], "/azure/other/")
	is.Equal(pick(b, "/other/"), "")
}

// Calls on every goroutine while Reconfigure flips between two pool sets:
// every choice is a member of one revision's pool, and nothing panics.
func TestCallsDuringReconfigurationSeeOneRevisionWhole(t *testing.T) {
	is := is.New(t)
	store := newFakeStore()
	b, _ := newBroker(t, broker.Config{Store: store})
	a := []broker.Pool{{Ingress: "/azure/", Routers: []broker.Router{{Path: "/azure/a1/", Weight: 1}, {Path: "/azure/a2/", Weight: 3, Priority: 1}}}}
	c := []broker.Pool{{Ingress: "/azure/", Strategy: "least-busy", Routers: []broker.Router{{Path: "/azure/c1/", Weight: 1}, {Path: "/azure/c2/", Weight: 2}, {Path: "/azure/c3/", Weight: 1}}},
		{Ingress: "/other/", Routers: []broker.Router{{Path: "/other/x/", Weight: 1}}}}
	allowed := map[string]bool{"/azure/a1/": true, "/azure/a2/": true, "/azure/c1/": true, "/azure/c2/": true, "/azure/c3/": true}
	pol := broker.Policy{DisabledTime: 100 * time.Millisecond}
	is.NoErr(b.Reconfigure(a, pol, 0))
	var stop atomic.Bool
	var wrong atomic.Value
	var calls atomic.Int64
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for !stop.Load() {
				id := b.Choose([]byte("/azure/"))
				if id < 0 {
					continue
				}
				path := b.Members()[id]
				if !allowed[path] {
					wrong.Store(path)
				}
				status := 200
				if g == 0 && calls.Load()%50 == 0 {
					status = 502
				}
				b.Report([]byte(path), status, 0)
				b.Finished([]byte(path), time.Millisecond, nil)
				calls.Add(1)
			}
		})
	}
	wg.Go(func() {
		for !stop.Load() {
			b.Refresh(time.Now())
			b.View(time.Now())
			b.Stats()
			time.Sleep(time.Millisecond)
		}
	})
	for i := range 200 {
		next := a
		if i%2 == 1 {
			next = c
		}
		is.NoErr(b.Reconfigure(next, pol, 0))
		ids := b.Routers("/azure/")
		for _, r := range ids {
			is.True(allowed[r]) // a router of the revision in force
		}
	}
	waitFor(t, func() bool { return calls.Load() > 1000 })
	stop.Store(true)
	wg.Wait()
	is.Equal(wrong.Load(), nil) // every choice a member of a revision's pool
}

// After Reconfigure returns, a removed router is never chosen.
func TestARemovedRouterGetsNoCallOnceApplied(t *testing.T) {
	is := is.New(t)
	b, _ := newBroker(t, broker.Config{})
	pol := broker.Policy{DisabledTime: time.Hour}
	for i := range 50 {
		keep := "/azure/k" + string(rune('a'+i%26)) + "/"
		is.NoErr(b.Reconfigure(pools("/azure/", keep, "/azure/stay/"), pol, 0))
		for range 20 {
			got := pick(b, "/azure/")
			is.True(got == keep || got == "/azure/stay/") // only the revision in force
		}
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
