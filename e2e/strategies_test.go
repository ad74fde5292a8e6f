package e2e

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/internal/standin"
	"github.com/gecholog/broker/internal/testutil/natstest"
)

// The demo, with real replica processes: a PTU deployment on tier
// 0 answers 429 with Retry-After once its quota is spent; the two
// pay-as-you-go deployments of tier 1 take every call until that time has
// passed, and then the calls return to the PTU. The clients see one 429:
// the one that told the broker.
func TestSpilloverToTier1UntilThePTUsRetryAfterHasPassed(t *testing.T) {
	t.Parallel()
	is := is.New(t)
	const ptu, payg1, payg2 = "/openai/ptu/", "/openai/payg1/", "/openai/payg2/"
	s := natstest.Start(t)
	pools := poolsFile(t, `{"pools":[{"ingress":"/openai/","routers":[
		{"path":"/openai/ptu/","priority":0},{"path":"/openai/payg1/","priority":1},{"path":"/openai/payg2/","priority":1}]}]}`)
	replicas := startReplicas(t, s, 3, "BROKER_POOLS", pools)
	const quota = 5
	gw := llmGateway(t, s, map[string]*standin.LLM{
		ptu:   {Model: "PTU", Quota: quota, Window: 2 * time.Second},
		payg1: {Model: "pay-as-you-go"},
		payg2: {Model: "pay-as-you-go"},
	})
	call := func() standin.Result {
		t.Helper()
		r, err := gw.Do(t.Context(), "/openai/")
		if err != nil {
			t.Fatal(err)
		}
		return r
	}

	// Tier 0 takes every call until its quota is spent. One caller at a
	// time, so that each report has been handled before the next call.
	var limited standin.Result
	served := 0
	for i := 0; limited.Status == 0 && i < 10*quota; i++ {
		switch r := call(); {
		case r.Router == ptu && r.Status == 200:
			served++
		case r.Router == ptu && r.Status == 429:
			limited = r
		default:
			t.Fatalf("call %d went to %s (%d) while the PTU had quota", i+1, r.Router, r.Status)
		}
	}
	is.Equal(limited.Status, 429) // the quota ran out
	is.True(served >= quota)      // after at least a quota of calls on tier 0
	retryAfter, err := strconv.Atoi(limited.Headers.Get("Retry-After"))
	is.NoErr(err)
	for _, r := range replicas {
		is.Equal(r.waitState(t, 5*time.Second, ptu, "disabled").Status, 429) // every replica holds the PTU out for its 429
	}

	// Tier 1 takes the calls until the quota is back (its reset, at most
	// the Retry-After); then a probe finds the PTU answering, and the
	// calls return.
	back := time.Now().Add(time.Duration(retryAfter) * time.Second)
	spilled := map[string]int{}
	var probe standin.Result
	// Calls go on until the probe, or 30 s past the Retry-After: how many
	// fit before it depends on the machine, not on the broker.
	for probe.Router == "" && time.Now().Before(back.Add(30*time.Second)) {
		switch r := call(); r.Router {
		case payg1, payg2:
			is.Equal(r.Status, 200)
			spilled[r.Router]++
		case ptu:
			probe = r
		default:
			t.Fatalf("call went to %s", r.Router)
		}
	}
	is.Equal(probe.Router, ptu) // the calls returned to tier 0
	is.Equal(probe.Status, 200) // when its quota was back
	// Not before the quota was back: the Retry-After (whole seconds,
	// rounded up) or, sooner, the exact reset of the count that ran out.
	wait := time.Duration(retryAfter) * time.Second
	if reset, err := time.ParseDuration(limited.Headers.Get("X-Ratelimit-Reset-Requests")); err == nil && reset < wait {
		wait = reset
	}
	is.True(!probe.Start.Before(limited.Stop.Add(wait))) // not before the PTU's quota was back
	is.True(spilled[payg1] > 0)                          // both pay-as-you-go deployments took calls
	is.True(spilled[payg2] > 0)                          // both pay-as-you-go deployments took calls
	t.Logf("%d calls on the PTU, a 429 with Retry-After %ds, %d calls to tier 1 (%v), then the probe %v after the 429",
		served, retryAfter, spilled[payg1]+spilled[payg2], spilled, probe.Start.Sub(limited.Stop).Round(time.Millisecond))

	for _, r := range replicas {
		r.waitState(t, 5*time.Second, ptu, "enabled")
	}
	for range 3 { // of the quota's 5 in the window, the probe took at most 1
		r := call()
		is.Equal(r.Router, ptu) // tier 0 again, on every replica
		is.Equal(r.Status, 200)
	}
}

// Least-busy across three replica processes: deployments of 20, 60 and 180
// ms under 12 callers at once. Every replica counts the calls in flight
// over the whole fleet, so the fast deployment takes most calls while the
// calls each deployment holds, counted by the deployments, stay near a
// fair share.
func TestLeastBusyBalancesCallsInFlightAcrossThreeReplicaProcesses(t *testing.T) {
	t.Parallel()
	is := is.New(t)
	s := natstest.Start(t)
	pools := poolsFile(t, `{"pools":[{"ingress":"/llm/","strategy":"least-busy","routers":[
		{"path":"/llm/fast/"},{"path":"/llm/mid/"},{"path":"/llm/slow/"}]}]}`)
	var replicas []*replica
	for i := range 3 {
		// Every choice is a debug line: counted, they show that every
		// replica chose.
		replicas = append(replicas, spawnReplica(t, replicaEnv(s, fmt.Sprintf("replica-%d", i+1),
			"BROKER_POOLS", pools, "BROKER_LOG_LEVEL", "debug"), countingDebugLines))
	}
	for _, r := range replicas {
		r.waitServing(t)
	}
	routers := []string{"/llm/fast/", "/llm/mid/", "/llm/slow/"}
	llms := map[string]*standin.LLM{
		routers[0]: {Latency: standin.Fixed(20 * time.Millisecond)},
		routers[1]: {Latency: standin.Fixed(60 * time.Millisecond)},
		routers[2]: {Latency: standin.Fixed(180 * time.Millisecond)},
	}
	gw := llmGateway(t, s, llms)

	// Every 10 ms, what each deployment holds.
	ctx, stop := context.WithCancel(t.Context())
	var sampler sync.WaitGroup
	samples, balanced := 0, 0
	sampler.Go(func() {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			var held [3]int64
			var total int64
			for i, r := range routers {
				held[i] = llms[r].InProgress()
				total += held[i]
			}
			above, below := 0.0, 0.0
			for _, h := range held {
				d := float64(h) - float64(total)/3
				above, below = max(above, d), max(below, -d)
			}
			samples++
			if above <= 2 || below <= 2 {
				balanced++
			}
		}
	})
	var mu sync.Mutex
	calls := map[string]int{}
	gw.Run(t.Context(), "/llm/", 900, 12, func(r standin.Result, err error) {
		if err != nil {
			t.Error(err)
			return
		}
		mu.Lock()
		calls[r.Router]++
		mu.Unlock()
	})
	stop()
	sampler.Wait()
	t.Logf("calls %v; %d of %d samples balanced within 2 calls of a fair share", calls, balanced, samples)
	is.True(calls[routers[0]] > calls[routers[1]])    // the fast deployment frees its calls soonest, and gets the most
	is.True(calls[routers[1]] > calls[routers[2]])    // then the middle one
	is.True(calls[routers[0]] >= 2*calls[routers[2]]) // random would give each a third; measured: 3.5 to 4 times
	is.True(samples > 50)                             // enough to say anything
	// Counts reach the other replicas within about 10 ms, and a
	// deployment that ends calls faster than new ones arrive falls below
	// its share whatever the broker chose, so not every sample is
	// balanced. Measured on 2 shared cores under the race detector: 88%
	// of samples for least-busy, 23% for random in this same test.
	if float64(balanced) < 0.7*float64(samples) {
		t.Errorf("%d of %d samples balanced within 2 calls of a fair share, fewer than 70%%", balanced, samples)
	}
	for _, r := range replicas {
		is.True(r.debug.Load() > 0) // every replica chose some of the calls
	}
}
