package replica_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/matryer/is"
	"github.com/nats-io/nats.go"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/replica"
)

// inFlight is router's calls in flight as replica b sees them.
func inFlight(b *broker.Broker, router string) int64 {
	for _, v := range b.View(time.Now()) {
		if v.Router == router {
			return v.InFlight
		}
	}
	return -1
}

// choosing starts 2 replicas serving pool, whose ingress is /azure/, and
// returns them, a connection to their server, and count, which asks them
// for n calls to the pool and counts the calls each router got.
func choosing(t *testing.T, pool broker.Pool) (*replicaSet, *nats.Conn, func(n int) map[string]int) {
	t.Helper()
	s := natstest.Start(t)
	rs := runReplicas(t, replica.Config{NATS: natsconn.Settings{Servers: s.ClientURL()}, Pools: []broker.Pool{pool},
		Policy: broker.Policy{DisabledTime: time.Minute}}, 2)
	nc := natstest.Connect(t, s)
	count := func(n int) map[string]int {
		got := map[string]int{}
		for range n {
			got[ask(t, nc, "/azure/")]++
		}
		return got
	}
	return rs, nc, count
}

func TestCallsInFlightAreCountedOverEveryReplica(t *testing.T) {
	s := natstest.Start(t)
	pool := broker.Pool{Ingress: "/azure/", Strategy: "least-busy", Routers: []broker.Router{
		{Path: "/azure/a/", Weight: 1}, {Path: "/azure/b/", Weight: 1}, {Path: "/azure/c/", Weight: 1}}}
	rs := runReplicas(t, replica.Config{NATS: natsconn.Settings{Servers: s.ClientURL()}, Pools: []broker.Pool{pool},
		Policy: broker.Policy{DisabledTime: time.Minute}}, 3)
	nc := natstest.Connect(t, s)
	// 30 calls chosen through the queue group, so by every replica, and
	// none reported yet: every replica counts each router's.
	chosen := map[string]int64{}
	for range 30 {
		chosen[ask(t, nc, "/azure/")]++
	}
	for r, n := range chosen {
		rs.every(t, 5*time.Second, func(b *broker.Broker) bool { return inFlight(b, r) == n }, fmt.Sprintf("%s has %d in flight", r, n))
	}
	// Reported, to any replica: none in flight.
	for r, n := range chosen {
		for range n {
			tell(t, nc, r, 200)
		}
	}
	for r := range chosen {
		rs.every(t, 5*time.Second, func(b *broker.Broker) bool { return inFlight(b, r) == 0 }, r+" has none in flight")
	}
}

func TestLeastBusySendsACallToTheRouterWithFewestInFlightRelativeToItsWeight(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	pool := broker.Pool{Ingress: "/azure/", Strategy: "least-busy", Routers: []broker.Router{
		{Path: "/azure/a/", Weight: 1}, {Path: "/azure/b/", Weight: 3}}}
	rs := runReplicas(t, replica.Config{NATS: natsconn.Settings{Servers: s.ClientURL()}, Pools: []broker.Pool{pool},
		Policy: broker.Policy{DisabledTime: time.Minute}}, 2)
	nc := natstest.Connect(t, s)
	// Each call waits for every replica to see the one before in flight:
	// then every choice is exact.
	chosen := map[string]int{}
	for n := 1; n <= 40; n++ {
		chosen[ask(t, nc, "/azure/")]++
		rs.every(t, 5*time.Second, func(b *broker.Broker) bool {
			return inFlight(b, "/azure/a/")+inFlight(b, "/azure/b/") == int64(n)
		}, fmt.Sprintf("%d in flight", n))
	}
	is.Equal(chosen["/azure/a/"], 10) // a quarter, by weight
	is.Equal(chosen["/azure/b/"], 30)
}

func TestCallsGoToTheBestTierAndSpillOverWhenItIsOut(t *testing.T) {
	is := is.New(t)
	pool := broker.Pool{Ingress: "/azure/", Routers: []broker.Router{
		{Path: "/azure/ptu/", Priority: 0},
		{Path: "/azure/payg1/", Priority: 1}, {Path: "/azure/payg2/", Priority: 1},
		{Path: "/azure/backup/", Priority: 2}}}
	for i := range pool.Routers {
		pool.Routers[i].Weight = 1
	}
	rs, nc, count := choosing(t, pool)
	is.Equal(count(30), map[string]int{"/azure/ptu/": 30}) // tier 0 takes every call
	// The PTU deployment answers 429 with a Retry-After: tier 1 takes over.
	if _, err := nc.Request(replica.DefaultSubject, []byte(`{"gl_path":"/azure/ptu/","egress_status_code":429,"inbound_headers":{"Retry-After":["1"]}}`), 2*time.Second); err != nil {
		t.Fatal(err)
	}
	rs.every(t, time.Second, func(b *broker.Broker) bool { return b.Phase("/azure/ptu/") == broker.Disabled }, "ptu out")
	spill := count(60)
	is.Equal(spill["/azure/ptu/"], 0)
	is.Equal(spill["/azure/backup/"], 0)                                // tier 2 is not needed
	is.True(spill["/azure/payg1/"] > 10 && spill["/azure/payg2/"] > 10) // tier 1 shares them
	// Both of tier 1 out as well: tier 2.
	tell(t, nc, "/azure/payg1/", 503)
	tell(t, nc, "/azure/payg2/", 503)
	rs.every(t, time.Second, func(b *broker.Broker) bool { return b.Phase("/azure/payg2/") == broker.Disabled }, "tier 1 out")
	is.Equal(count(10), map[string]int{"/azure/backup/": 10})
	// The Retry-After ends: the PTU router is probed, and back once it answers.
	var mu sync.Mutex
	probed := false
	natstest.Eventually(t, 5*time.Second, func() bool {
		if ask(t, nc, "/azure/") == "/azure/ptu/" {
			mu.Lock()
			probed = true
			mu.Unlock()
		}
		return probed
	}, "the probe goes to the PTU router")
	tell(t, nc, "/azure/ptu/", 200)
	rs.every(t, time.Second, func(b *broker.Broker) bool { return b.Phase("/azure/ptu/") == broker.Enabled }, "ptu back")
	is.Equal(count(20), map[string]int{"/azure/ptu/": 20}) // calls return to tier 0
}
