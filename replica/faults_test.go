package replica_test

// The faults a gateway's bus really has, each survived under load: the NATS
// server restarting, a cluster node dying, a burst larger than the broker can
// answer at once. Replicas are full replica.Run calls in this process, each with
// its own connection and bucket watcher, on real embedded nats-servers.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/matryer/is"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/testutil/natstest"
)

const (
	askRouter = `{"gl_path":"/azure/"}`
	dudFailed = `{"gl_path":"/azure/dud/","egress_status_code":502}`
)

func TestNATSRestartMidLoadKeepsDisablesAndAnswersAgainWithinTwoSeconds(t *testing.T) {
	is := is.New(t)
	port, store := freePort(t), t.TempDir()
	first := natstest.Start(t, onPort(port), natstest.WithStoreDir(store))
	f := startFaultFleet(t, first.ClientURL(), 3, 1)
	defer f.stop()
	// The load's own connection retries every 10 ms, so that the time
	// measured is the replicas' and not the test's.
	nc := natstest.Connect(t, first, nats.MaxReconnects(-1), nats.ReconnectWait(10*time.Millisecond))
	_, err := nc.Request("coburn.gl.broker", []byte(dudFailed), 2*time.Second)
	is.NoErr(err)
	f.every(t, 2*time.Second, phaseIs("/azure/dud/", broker.Disabled), "disabled before the restart")
	js, err := jetstream.New(nc)
	is.NoErr(err)
	waitRecord(t, js, "/azure/dud/", 2*time.Second)

	load := startCallLoad(t, nc, 4, 500*time.Millisecond)
	load.WaitAnswered(t, time.Time{}, 200, 10*time.Second)
	first.Shutdown()
	first.WaitForShutdown()
	down := time.Now()
	// Every replica has lost its connection before the server returns.
	f.awaitDisconnected(t, 5*time.Second)
	base := f.chosen()
	second := natstest.Start(t, onPort(port), natstest.WithStoreDir(store))
	back := time.Now()
	answered := f.answersAgain(t, base, back, 5*time.Second)
	for _, b := range f.replicas {
		is.Equal(b.Phase("/azure/dud/"), broker.Disabled) // the disable set before the restart holds
	}
	r := waitRecord(t, natstest.JetStream(t, second), "/azure/dud/", time.Second)
	is.Equal(r.Status, 502) // and it is still in the bucket, read through a new connection

	mark := time.Now()
	load.WaitAnswered(t, mark, 200, 10*time.Second)
	calls := load.Finish()
	slowest := slices.Max(answered)
	resumed := back.Add(slowest)
	var failed, failedAfter int
	firstOK := time.Duration(-1)
	for _, c := range calls {
		if c.Err != nil {
			failed++
			if c.Start.After(resumed) {
				failedAfter++
			}
		} else if c.End.After(back) && (firstOK < 0 || c.End.Sub(back) < firstOK) {
			firstOK = c.End.Sub(back)
		}
	}
	t.Logf("server down %v; from the server ready again to each replica answering: %v (max %v); first answer to the load %v; "+
		"%d calls, %d failed, all sent before every replica was back",
		back.Sub(down).Round(time.Millisecond), roundAll(answered), slowest.Round(time.Millisecond), firstOK.Round(time.Millisecond),
		len(calls), failed)
	is.True(slowest <= 2*time.Second) // every replica answers within 2 s of the server's return
	is.Equal(failedAfter, 0)          // no call fails once every replica is back
}

func TestClusterNodeLossMovesReplicasToAnotherNodeAndLosesNoDisable(t *testing.T) {
	is := is.New(t)
	nodes := natstest.StartCluster(t, 3)
	var urls []string
	for _, n := range nodes {
		urls = append(urls, n.ClientURL())
	}
	f := startFaultFleet(t, strings.Join(urls, ","), 3, 3) // NATS_URL=all three, BROKER_KV_REPLICAS=3
	defer f.stop()
	on := f.servingNodes(t, urls)
	victim := on[0] // the node replica-1 is connected to
	survivor := (victim + 1) % len(nodes)
	var moved []int // the replicas on the victim
	for i, n := range on {
		if n == victim {
			moved = append(moved, i)
		}
	}
	nc := natstest.Connect(t, nodes[survivor])
	js, err := jetstream.New(nc)
	is.NoErr(err)
	stream, err := js.Stream(context.Background(), "KV_gl_broker")
	is.NoErr(err)
	is.Equal(stream.CachedInfo().Config.Replicas, 3) // the bucket was created with three replicas
	stream, err = js.Stream(context.Background(), "KV_gl_broker_config")
	is.NoErr(err)
	is.Equal(stream.CachedInfo().Config.Replicas, 3) // and so was the fleet's configuration's
	waitInterest(t, nc)

	_, err = nc.Request("coburn.gl.broker", []byte(dudFailed), 2*time.Second)
	is.NoErr(err)
	f.every(t, 2*time.Second, phaseIs("/azure/dud/", broker.Disabled), "disabled before the node loss")
	waitRecord(t, js, "/azure/dud/", 2*time.Second)

	const callers = 4
	load := startCallLoad(t, nc, callers, time.Second)
	load.WaitAnswered(t, time.Time{}, 200, 10*time.Second)
	killed := time.Now()
	nodes[victim].Shutdown()
	nodes[victim].WaitForShutdown()

	// Each replica that was on the node reconnects elsewhere and answers
	// calls there. Calls it chose before the reconnect line do not count:
	// they may have been waiting in its connection's buffer.
	resumed := make([]time.Duration, len(moved))
	for k, i := range moved {
		var to string
		natstest.Eventually(t, 5*time.Second, func() bool {
			l, ok := logLineWithPrefix(f.logs[i].String(), "reconnected to NATS")
			to = fmt.Sprint(l["server"])
			return ok
		}, "replica-%d reconnects", i+1)
		is.True(to != urls[victim]) // to another node
		base := f.replicas[i].Stats().Calls[broker.Chosen]
		natstest.Eventually(t, time.Until(killed.Add(5*time.Second)), func() bool {
			return f.replicas[i].Stats().Calls[broker.Chosen] > base
		}, "replica-%d answers again within 5 s of the node loss", i+1)
		resumed[k] = time.Since(killed)
	}
	failover := slices.Max(resumed) // replica-1 at least was moved

	// No disable is lost: every replica still has it, and so has the bucket
	// once its stream has a leader again.
	for _, b := range f.replicas {
		is.Equal(b.Phase("/azure/dud/"), broker.Disabled)
	}
	r := waitRecord(t, js, "/azure/dud/", 10*time.Second)
	is.Equal(r.Status, 502)
	readable := time.Since(killed)
	// And a disable after the loss is written to the bucket.
	reported := time.Now()
	_, err = nc.Request("coburn.gl.broker", []byte(`{"gl_path":"/azure/gpt4/","egress_status_code":503}`), 2*time.Second)
	is.NoErr(err)
	waitRecord(t, js, "/azure/gpt4/", 10*time.Second)
	written := time.Since(reported)

	load.WaitAnswered(t, time.Now(), 200, 10*time.Second)
	calls := load.Finish()
	// Calls in flight on the lost node time out. While the node shuts down,
	// the gateway's node may also pick one of its queue members, still
	// registered behind a route that is closing, and answer "no responders"
	// at once: nats-server does not try another member then. Both happen in
	// the moments after the loss; a second later every call is answered.
	settled := killed.Add(time.Second)
	var timeouts, noResponders, other, failedAfter int
	window := "none" // when the failed calls were sent, after the loss
	var sent []time.Duration
	for _, c := range calls {
		if c.Err == nil {
			continue
		}
		switch {
		case errors.Is(c.Err, nats.ErrTimeout):
			timeouts++
		case errors.Is(c.Err, nats.ErrNoResponders):
			noResponders++
		default:
			other++
			t.Logf("call failed: %v", c.Err)
		}
		if c.Start.After(settled) {
			failedAfter++
		}
		sent = append(sent, c.Start.Sub(killed))
	}
	if len(sent) > 0 {
		window = fmt.Sprintf("%v to %v", slices.Min(sent).Round(time.Millisecond), slices.Max(sent).Round(time.Millisecond))
	}
	t.Logf("killed node n%d with %d of %d replicas on it; they answered again after %v (max %v); the bucket answered %v after the loss; "+
		"a disable reported after it was in the bucket %v later; %d calls by %d callers: %d timed out, %d no responders, %d other failures, "+
		"sent %s after the loss",
		victim+1, len(moved), len(f.replicas), roundAll(resumed), failover.Round(time.Millisecond), readable.Round(time.Millisecond),
		written.Round(time.Millisecond), len(calls), callers, timeouts, noResponders, other, window)
	is.True(timeouts <= callers) // at most the calls in flight on the lost node
	is.Equal(other, 0)
	is.Equal(failedAfter, 0) // every call from a second after the loss is answered
}

// watcherLost names the bug TestEveryReplicaHearsOfChangesAfterTheNodeHoldingItsWatcherIsLost finds.
// A watcher's ordered consumer lives in the server's memory and does not
// survive a restart; the replica must watch again as soon as it reconnects.
func TestEveryReplicaHearsOfChangesWithinTwoSecondsOfANATSRestart(t *testing.T) {
	port, store := freePort(t), t.TempDir()
	first := natstest.Start(t, onPort(port), natstest.WithStoreDir(store))
	f := startFaultFleet(t, first.ClientURL(), 3, 1)
	defer f.stop()
	first.Shutdown()
	first.WaitForShutdown()
	f.awaitDisconnected(t, 5*time.Second)
	second := natstest.Start(t, onPort(port), natstest.WithStoreDir(store))
	back := time.Now()
	// Written the moment the server is back, as an operator's `nats kv
	// put` or another replica's disable would be.
	putManual(t, natstest.JetStream(t, second), "/azure/gpt4/")
	f.every(t, 2*time.Second, phaseIs("/azure/gpt4/", broker.Manual), "a record written right after the restart")
	t.Logf("a record written as the server came back reached every replica %v later", time.Since(back).Round(time.Millisecond))
}

func TestEveryReplicaHearsOfChangesAfterTheNodeHoldingItsWatcherIsLost(t *testing.T) {
	is := is.New(t)
	nodes := natstest.StartCluster(t, 3)
	var urls []string
	for _, n := range nodes {
		urls = append(urls, n.ClientURL())
	}
	// A watcher's consumer is R1, on a random node of the stream's three,
	// and delivers to a subscription of its replica's connection. The worst
	// node to lose holds the watcher of a replica connected elsewhere: that
	// replica's connection never breaks, so no reconnect tells it to watch
	// again. Replicas are started again until one has its watcher on
	// another node than its connection (each start has a 1 - (1/3)^3 chance).
	var f *replicaSet
	var on []int
	victim, watched := -1, -1
	for attempt := 0; attempt < 10 && victim < 0; attempt++ {
		if f != nil {
			f.stop()
		}
		f = startFaultFleet(t, strings.Join(urls, ","), 3, 3)
		on = f.servingNodes(t, urls)
		owner := map[string]int{} // deliver subject → replica
		for _, n := range nodes {
			cz, err := n.Connz(&server.ConnzOptions{Subscriptions: true})
			is.NoErr(err)
			for _, c := range cz.Conns {
				for i := range f.replicas {
					if c.Name == fmt.Sprintf("gecholog-broker replica-%d", i+1) {
						for _, sub := range c.Subs {
							owner[sub] = i
						}
					}
				}
			}
		}
		stream, err := natstest.JetStream(t, nodes[0]).Stream(context.Background(), "KV_gl_broker")
		is.NoErr(err)
		// Read to the end: nats.go's lister blocks forever on a consumer
		// nobody takes.
		for c := range stream.ListConsumers(context.Background()).Info() {
			i, ok := owner[c.Config.DeliverSubject]
			if !ok || c.Cluster == nil || victim >= 0 {
				continue
			}
			if node := slices.IndexFunc(nodes, func(n *server.Server) bool { return n.Name() == c.Cluster.Leader }); node >= 0 && node != on[i] {
				victim, watched = node, i
			}
		}
	}
	defer f.stop()
	is.True(victim >= 0)           // a node holds the watcher of a replica connected to another
	is.True(on[watched] != victim) // so losing it breaks no connection of that replica
	nc := natstest.Connect(t, nodes[(victim+1)%len(nodes)])
	waitInterest(t, nc)
	js, err := jetstream.New(nc)
	is.NoErr(err)
	nodes[victim].Shutdown()
	nodes[victim].WaitForShutdown()
	// Written to the bucket, not reported to a replica, which would apply
	// its own report at once: every replica must hear it from its watcher.
	// The stream may first need a new leader.
	natstest.Eventually(t, 10*time.Second, func() bool { return tryPutManual(js, "/azure/gpt4/") == nil }, "a write to the bucket")
	written := time.Now()
	f.every(t, 5*time.Second, phaseIs("/azure/gpt4/", broker.Manual), "a record written after the node loss")
	t.Logf("lost node %s, which held the watcher of replica-%d (connected to %s); a record written after the loss reached every replica %v later",
		nodes[victim].Name(), watched+1, nodes[on[watched]].Name(), time.Since(written).Round(time.Millisecond))
}

func TestBurstOf50000CallsIsAnsweredInFullWithoutSlowConsumer(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	var logs syncBuffer
	r, stop := serveOne(t, s.ClientURL(), &logs)
	defer stop()
	b := r.Broker()

	const total, conns = 50_000, 4
	var sent, replied, wrong atomic.Int64
	inboxes := make([]string, conns)
	clients := make([]*nats.Conn, conns)
	for i := range clients {
		clients[i] = natstest.Connect(t, s)
		inboxes[i] = clients[i].NewInbox()
		sub, err := clients[i].Subscribe(inboxes[i], func(m *nats.Msg) {
			if bytes.HasPrefix(m.Data, []byte(`{"gl_path":"/azure/`)) {
				replied.Add(1)
			} else {
				wrong.Add(1)
			}
		})
		is.NoErr(err)
		is.NoErr(sub.SetPendingLimits(-1, -1)) // a drop, if any, is the broker's and not the test's
		is.NoErr(clients[i].Flush())
	}

	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	before := ms.HeapInuse
	var peakHeap uint64
	var peakBacklog, peakQueued int64 // sent but not replied; sent but not yet handled by the broker
	sampled := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			peakHeap = max(peakHeap, ms.HeapInuse)
			handled := int64(b.Stats().Calls[broker.Chosen])
			peakQueued = max(peakQueued, sent.Load()-handled)
			peakBacklog = max(peakBacklog, sent.Load()-replied.Load())
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()

	start := time.Now()
	var wg sync.WaitGroup
	for i, nc := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range total / conns {
				if err := nc.PublishRequest("coburn.gl.broker", inboxes[i], []byte(askRouter)); err != nil {
					t.Errorf("publish: %v", err)
					return
				}
				sent.Add(1)
			}
			if err := nc.Flush(); err != nil {
				t.Errorf("flush: %v", err)
			}
		}()
	}
	wg.Wait()
	published := time.Since(start)
	// Until every reply is in, or the broker says it dropped calls (then
	// the missing replies will never come).
	deadline := time.Now().Add(30 * time.Second)
	for replied.Load()+wrong.Load() < total && time.Now().Before(deadline) && !strings.Contains(logs.String(), "slow consumer") {
		time.Sleep(5 * time.Millisecond)
	}
	elapsed := time.Since(start)
	close(done)
	<-sampled
	runtime.GC()
	runtime.ReadMemStats(&ms)
	after := ms.HeapInuse

	const mb = 1 << 20
	t.Logf("%d calls from %d connections, published in %v, all replies in %v (%.0f calls/s); peak not yet handled by the broker %d, not yet replied %d; "+
		"heap in use before %.1f MB, peak %.1f MB (+%.1f MB), after %.1f MB; server slow consumers %d; broker answered %d",
		sent.Load(), conns, published.Round(time.Millisecond), elapsed.Round(time.Millisecond), float64(total)/elapsed.Seconds(), peakQueued, peakBacklog,
		float64(before)/mb, float64(peakHeap)/mb, float64(peakHeap-min(before, peakHeap))/mb, float64(after)/mb,
		s.NumSlowConsumers(), b.Stats().Calls[broker.Chosen])
	is.Equal(sent.Load(), int64(total))
	is.Equal(s.NumSlowConsumers(), int64(0))                       // the server dropped nothing and disconnected no one
	is.Equal(b.Stats().Calls[broker.Chosen], uint64(total))        // the broker handled every call
	is.Equal(wrong.Load(), int64(0))                               // each with a router of the pool
	is.Equal(replied.Load(), int64(total))                         // and every reply arrived
	is.True(peakHeap < before+128*mb)                              // memory bounded
	is.True(!strings.Contains(logs.String(), `"level":"ERROR"`))   // no NATS error, slow consumer or other
	is.True(!strings.Contains(logs.String(), "disconnected from")) // and never a disconnect
}
