package replica_test

import (
	"bytes"
	"encoding/json"
	"io"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/ops"
	"github.com/gecholog/broker/replica"
)

// TestDisableNamesTheReplicaThatCannotHearTheBucket runs `broker disable`
// beside three replicas, one of which hears nothing the server delivers
// (no watcher, no news, no answer to a read of the bucket) while it still
// speaks on the stats subject, as a replica cut off from its bucket does.
// The line says the disable is in the bucket, not "on every replica",
// confirmed by 2 of 3, and names that replica as not yet; that replica's
// view indeed does not hold it. Once it hears again it takes the disable,
// and the enable that follows is confirmed by all three.
func TestDisableNamesTheReplicaThatCannotHearTheBucket(t *testing.T) {
	t.Parallel() // waits on the fleet more than it computes
	s := natstest.Start(t)
	proxy := natstest.StartProxy(t, s.ClientURL())
	cfg := func(id, url string) replica.Config {
		return replica.Config{NATS: natsconn.Settings{Servers: url}, Policy: broker.Policy{DisabledTime: time.Minute},
			ID: id, Logger: jsonLogger(io.Discard)}
	}
	startReplica(t, cfg("replica-1", s.ClientURL()))
	startReplica(t, cfg("replica-2", s.ClientURL()))
	cut, _ := startReplica(t, cfg("replica-3", proxy.ClientURL()))
	tgt := ops.Target{NATS: natsconn.Settings{Servers: s.ClientURL()}, Bucket: replica.DefaultBucket, Pools: broker.DefaultPools()}
	run := func(what string, op func(*bytes.Buffer) error) string {
		var out bytes.Buffer
		if err := op(&out); err != nil {
			t.Fatalf("broker %s: %v", what, err)
		}
		return out.String()
	}
	var table string
	natstest.Eventually(t, 10*time.Second, func() bool {
		table = run("status", func(out *bytes.Buffer) error { return ops.Status(t.Context(), tgt, ops.StatusOptions{}, out) })
		return bytes.Contains([]byte(table), []byte("replicas: 3 heard"))
	}, "broker status hearing the three replicas; it says:\n%s", &table)

	proxy.Deafen(func(string) bool { return true })
	out := run("disable", func(out *bytes.Buffer) error {
		return ops.DisableRouter(t.Context(), tgt, ops.Disable{Router: "/azure/gpt4/", For: time.Minute, Reason: "test", By: "alice"},
			func(string) string { return "" }, out)
	})
	says(t, "broker disable", out, "disabled /azure/gpt4/ in bucket gl_broker for 1m0s, until ")
	saysLast(t, "broker disable", out, "; manual, by alice: test; confirmed by 2 of 3 replicas within 2s; not yet: replica-3 (a replica cut off from the bucket applies it once it hears the bucket again)\n")
	neverSays(t, "broker disable", out, "on every replica")
	if ph := cut.Broker().Phase("/azure/gpt4/"); ph == broker.Manual {
		t.Errorf("replica-3, named as not yet, holds the disable already")
	}

	proxy.Hear()
	natstest.Eventually(t, 30*time.Second, func() bool { return cut.Broker().Phase("/azure/gpt4/") == broker.Manual },
		"replica-3 taking the disable once it hears the bucket again")
	out = run("enable", func(out *bytes.Buffer) error { return ops.EnableRouter(t.Context(), tgt, "/azure/gpt4/", out) })
	says(t, "broker enable", out, "enabled /azure/gpt4/ on every replica; removed the manual disable by alice (test, until ")
	saysLast(t, "broker enable", out, "; confirmed by all 3 replicas\n")
}

// TestAnIdleReplicaTellsAChangeItTookAtOnce: an idle replica speaks only at
// its heartbeat, once a second, but tells a change its view took from the
// bucket at once, so that `broker disable` and `enable` hear within
// milliseconds which replicas hold their write. The word that carries the
// take comes sooner after the replica's previous word than a heartbeat
// would; a replica that left it to its heartbeat fails it every time, so a
// machine stalled a whole second at the wrong moment is given three tries.
func TestAnIdleReplicaTellsAChangeItTookAtOnce(t *testing.T) {
	s, _, nc, h := heardFleet(t, 3)
	const router = "/azure/gpt4/"
	type word struct {
		at    time.Time // as the replica told it
		phase string    // of router among what it took ("": none)
	}
	var mu sync.Mutex
	words := map[string][]word{}
	sub, err := nc.Subscribe(replica.StatsSubject(replica.DefaultBucket), func(m *nats.Msg) {
		var msg replica.StatsMessage
		if json.Unmarshal(m.Data, &msg) != nil || msg.ID == "" || msg.Bye {
			return
		}
		w := word{at: msg.At}
		if i := slices.IndexFunc(msg.Taken, func(t replica.TakenTold) bool { return t.Router == router }); i >= 0 {
			w.phase = msg.Taken[i].Phase
		}
		mu.Lock()
		defer mu.Unlock()
		words[msg.ID] = append(words[msg.ID], w)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	// gap is how long after its previous word a replica told that it took
	// phase, since from (false: not yet told).
	gap := func(id, phase string, from time.Time) (time.Duration, bool) {
		mu.Lock()
		defer mu.Unlock()
		ws := words[id]
		for i := 1; i < len(ws); i++ {
			if ws[i].phase == phase && !ws[i].at.Before(from) {
				return ws[i].at.Sub(ws[i-1].at), true
			}
		}
		return 0, false
	}

	tgt := ops.Target{NATS: natsconn.Settings{Servers: s.ClientURL()}, Bucket: replica.DefaultBucket, Pools: broker.DefaultPools()}
	prompt := map[string]time.Duration{}
	for try := 0; try < 3 && len(prompt) < len(threeReplicas); try++ {
		// Just after a word of each, so that a heartbeat is a second away.
		mark := time.Now()
		natstest.Eventually(t, 5*time.Second, func() bool { return h.since(mark, threeReplicas...) }, "a word of every replica")
		from := time.Now()
		phase := "manual"
		var out bytes.Buffer
		if try%2 == 0 {
			err = ops.DisableRouter(t.Context(), tgt, ops.Disable{Router: router, For: time.Minute, Reason: "test", By: "alice"},
				func(string) string { return "" }, &out)
		} else {
			phase = "enabled"
			err = ops.EnableRouter(t.Context(), tgt, router, &out)
		}
		if err != nil {
			t.Fatalf("broker disable or enable: %v", err)
		}
		for _, id := range threeReplicas {
			var d time.Duration
			natstest.Eventually(t, 5*time.Second, func() (told bool) { d, told = gap(id, phase, from); return told },
				"%s telling it took %s %s", id, router, phase)
			if _, ok := prompt[id]; !ok && d < replica.StatsAtLeast {
				prompt[id] = d
			}
		}
	}
	for _, id := range threeReplicas {
		if d, ok := prompt[id]; !ok {
			t.Errorf("%s told the change it took no sooner than a heartbeat (%v) after its previous word, in each of three tries", id, replica.StatsAtLeast)
		} else {
			t.Logf("%s told the change it took %v after its previous word", id, d)
		}
	}
}
