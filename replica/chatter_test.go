package replica_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/standin"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/replica"
)

// statsHeard follows the stats subject: when each replica last spoke, and
// how many words it said in all, JSON or binary.
type statsHeard struct {
	mu    sync.Mutex
	last  map[string]time.Time
	words map[string]int
}

func hearStats(t *testing.T, nc *nats.Conn) *statsHeard {
	t.Helper()
	h := &statsHeard{last: map[string]time.Time{}, words: map[string]int{}}
	subscribeFor(t, nc, replica.StatsSubject(replica.DefaultBucket), func(m *nats.Msg) {
		names := wordNames(m) // the binary words of counts
		var msg replica.StatsMessage
		if names == nil && json.Unmarshal(m.Data, &msg) == nil && msg.ID != "" {
			names = []string{msg.ID}
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, id := range names {
			h.last[id] = time.Now()
			h.words[id]++
		}
	})
	return h
}

// since says whether every one of ids spoke after at.
func (h *statsHeard) since(at time.Time, ids ...string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, id := range ids {
		if !h.last[id].After(at) {
			return false
		}
	}
	return true
}

func (h *statsHeard) total() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, w := range h.words {
		n += w
	}
	return n
}

var threeReplicas = []string{"replica-1", "replica-2", "replica-3"}

// heardFleet starts n replicas (of pools, or the default pool) and a
// connection that hears their words, and returns once every one was heard.
func heardFleet(t *testing.T, n int, pools ...broker.Pool) (*server.Server, *replicaSet, *nats.Conn, *statsHeard) {
	t.Helper()
	s := natstest.Start(t)
	rs := runReplicas(t, replica.Config{NATS: natsconn.Settings{Servers: s.ClientURL()}, Policy: minute, Pools: pools}, n)
	nc := natstest.Connect(t, s)
	h := hearStats(t, nc)
	start := time.Now()
	ids := threeReplicas[:n]
	natstest.Eventually(t, 5*time.Second, func() bool { return h.since(start, ids...) }, "every replica heard")
	return s, rs, nc, h
}

// TestAnIdleFleetTellsOnlyItsHeartbeats: replicas without calls say
// nothing new, so each speaks once a second (it spoke ten times a second),
// and yet none forgets another.
func TestAnIdleFleetTellsOnlyItsHeartbeats(t *testing.T) {
	_, rs, _, h := heardFleet(t, 3)

	const idle = 3 * time.Second
	from := h.total()
	<-time.After(idle) // a time to count over, not a guess at when something happens
	words := h.total() - from
	// A heartbeat a second each, and one more each for the window's edges.
	if most := len(threeReplicas) * (int(idle/time.Second) + 1); words > most {
		t.Errorf("an idle fleet of 3 said %d words in %v, want at most %d", words, idle, most)
	}
	for i, r := range rs.fleet.Replicas {
		if got := len(r.Revisions().Replicas); got != len(threeReplicas) {
			t.Errorf("replica-%d knows %d replicas after %v idle, want %d: its heartbeats keep each known", i+1, got, idle, len(threeReplicas))
		}
	}
}

// TestAnIdleReplicaAnswersAnAskAtOnce: `broker status` listens a quarter
// of a second, well short of a heartbeat; each replica answers its ask at
// once.
func TestAnIdleReplicaAnswersAnAskAtOnce(t *testing.T) {
	_, _, nc, h := heardFleet(t, 3)
	for range 3 {
		asked := time.Now()
		if err := replica.AskStats(nc, replica.DefaultBucket); err != nil {
			t.Fatal(err)
		}
		// Without the answer, all three heartbeats fall within it one time
		// in 15; three times running, one in 3,000.
		natstest.Eventually(t, 400*time.Millisecond, func() bool { return h.since(asked, threeReplicas...) }, "every replica answers the ask")
	}
}

// TestAQuietReplicaTellsACallAtOnce: a quiet replica of a pool that
// reads the fleet's calls in flight wakes on a call and the others see it
// in flight at once, as they did when every replica ticked. (A replica
// whose pools read none tells its changing counts a sixtieth of the
// failure-rate window apart: wordEvery.)
func TestAQuietReplicaTellsACallAtOnce(t *testing.T) {
	_, rs, nc, _ := heardFleet(t, 3, poolOf("least-busy", "a", "b", "c"))
	for range 3 {
		router := ask(t, nc, "/azure/")
		called := time.Now()
		rs.every(t, 400*time.Millisecond, func(b *broker.Broker) bool { return inFlight(b, router) == 1 }, "the call in flight")
		tell(t, nc, router, 200)
		rs.every(t, 400*time.Millisecond, func(b *broker.Broker) bool { return inFlight(b, router) == 0 }, "the call reported")
		t.Logf("in flight and reported on every replica within %v", time.Since(called))
	}
}

// TestAStoppedReplicaIsForgottenAtOnce: a replica that stops says so, and
// the others forget it then rather than after broker.PeerSilence; status
// lists it no more.
func TestAStoppedReplicaIsForgottenAtOnce(t *testing.T) {
	s := natstest.Start(t)
	base := replica.Config{NATS: natsconn.Settings{Servers: s.ClientURL()}, Policy: minute}
	var rs []*replica.Replica
	var stops []func()
	for _, id := range []string{"replica-1", "replica-2", "replica-3"} {
		c := base
		c.ID = id
		r, stop := startReplica(t, c)
		rs, stops = append(rs, r), append(stops, stop)
	}
	knows := func(n int) func() bool {
		return func() bool {
			return rs[0].Broker().Peers() == n && rs[1].Broker().Peers() == n && len(rs[0].Revisions().Replicas) == n+1
		}
	}
	natstest.Eventually(t, 5*time.Second, knows(2), "each knows the other two")
	stops[2]()
	stopped := time.Now()
	// Forgotten after its silence would be three seconds on.
	natstest.Eventually(t, time.Second, knows(1), "replica-3 forgotten")
	t.Logf("replica-3 forgotten %v after it stopped", time.Since(stopped))
}

// TestABusyReplicaOfRandomPoolsTellsTenTimesASecond: no pool chooses by
// the fleet's calls in flight, so a replica whose counts change all the
// time tells them every 100 ms, not every 10.
func TestABusyReplicaOfRandomPoolsTellsTenTimesASecond(t *testing.T) {
	s, _, _, h := heardFleet(t, 1)
	l := startCallLoad(t, natstest.Connect(t, s), 2, time.Second)
	defer l.Finish()
	l.WaitAnswered(t, time.Now(), 100, 5*time.Second) // calls keep coming
	const busy = time.Second
	from := h.total()
	<-time.After(busy) // a time to count over
	words := h.total() - from
	if most := int(busy/(100*time.Millisecond)) + 3; words > most {
		t.Errorf("a busy replica of random pools said %d words in %v, want at most %d", words, busy, most)
	}
}

// TestAFloodOfAsksIsAnsweredAtMostEveryTick: whoever may publish on the
// stats subject may ask without end; each replica answers at most once a
// tick, and the flood never puts its words off.
func TestAFloodOfAsksIsAnsweredAtMostEveryTick(t *testing.T) {
	_, _, nc, h := heardFleet(t, 1)
	const flood = 1500 * time.Millisecond
	from := h.total()
	floodStart := time.Now()
	asks := 0
	for end := time.Now().Add(flood); time.Now().Before(end); asks++ {
		if err := replica.AskStats(nc, replica.DefaultBucket); err != nil {
			t.Fatal(err)
		}
		<-time.After(2 * time.Millisecond) // a flood, every 2 ms
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	words := h.total() - from
	t.Logf("%d asks in %v: %d words", asks, time.Since(floodStart), words)
	if most := int(time.Since(floodStart)/(10*time.Millisecond)) + 10; words > most { // not one an ask
		t.Errorf("the replica answered %d words in %v of asks every 2 ms, want at most %d", words, flood, most)
	}
	if !h.since(floodStart.Add(flood/2), "replica-1") {
		t.Errorf("the replica said nothing in the flood's second half: the asks put its words off")
	}
}

// TestALargeIdleFleetSpacesItsHeartbeatsAndForgetsNone: in a fleet of 14
// each replica hears 13 others, so it tells its heartbeat every 1.3 s
// rather than every second, and says so, so that each hears about ten a
// second whatever the fleet's size; and no replica forgets another
// between two of them, although they are further apart than the second
// of a small fleet.
func TestALargeIdleFleetSpacesItsHeartbeatsAndForgetsNone(t *testing.T) {
	const n = 14
	s := natstest.Start(t)
	rs := runReplicas(t, replica.Config{NATS: natsconn.Settings{Servers: s.ClientURL()}, Policy: minute}, n)
	rs.every(t, 10*time.Second, func(b *broker.Broker) bool { return b.Peers() == n-1 }, "every replica hears the others")
	nc := natstest.Connect(t, s)
	var mu sync.Mutex
	heard := map[string][]time.Time{}
	every := map[string]map[int64]bool{}
	sub, err := nc.Subscribe(replica.StatsSubject(replica.DefaultBucket), func(m *nats.Msg) {
		var msg replica.StatsMessage
		if json.Unmarshal(m.Data, &msg) != nil || msg.ID == "" {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		heard[msg.ID] = append(heard[msg.ID], time.Now())
		if every[msg.ID] == nil {
			every[msg.ID] = map[int64]bool{}
		}
		every[msg.ID][msg.Every] = true
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	const idle = 5 * time.Second
	<-time.After(idle) // a time to count over, not a guess at when something happens
	mu.Lock()
	defer mu.Unlock()
	if len(heard) != n {
		t.Fatalf("heard %d replicas in %v idle, want %d", len(heard), idle, n)
	}
	for id, at := range heard {
		if len(every[id]) != 1 || !every[id][1300] {
			t.Errorf("%s told heartbeats %v ms apart, want 1300", id, every[id])
		}
		for i := 1; i < len(at); i++ {
			// Its timer may fire a little early or late; a second apart
			// would be a small fleet's.
			if gap := at[i].Sub(at[i-1]); gap < 1200*time.Millisecond {
				t.Errorf("%s told two heartbeats %v apart, want about 1.3 s", id, gap)
			}
		}
	}
	for i, r := range rs.fleet.Replicas {
		if got := len(r.Revisions().Replicas); got != n {
			t.Errorf("replica-%d knows %d replicas after %v idle, want %d: its heartbeats keep each known", i+1, got, idle, n)
		}
	}
}

// TestOnlyTheReplicaNamedFirstTellsWhatTheLogSaysOfIdleRouters: every
// replica knows each router's latency and headroom alike from the
// transaction log, so an idle replica's heartbeat carries only the routers
// it counts calls of, and the one whose name comes first tells the rest,
// for `broker status`: the heartbeat does not grow with every router whose
// latency the fleet knows.
func TestOnlyTheReplicaNamedFirstTellsWhatTheLogSaysOfIdleRouters(t *testing.T) {
	s, rs, nc, _ := heardFleet(t, 3)
	finish(t, nc, standin.Finished{Ingress: "/azure/", Router: "/azure/gpt4/", Latency: 120 * time.Millisecond, Payload: 1 << 10,
		Headers: map[string]string{"x-ratelimit-remaining-requests": "25", "x-ratelimit-limit-requests": "100", "x-ratelimit-reset-requests": "1m0s"}})
	rs.every(t, 5*time.Second, func(b *broker.Broker) bool { return viewOf(b, "/azure/gpt4/").LatencyKnown }, "the latency")

	heartbeats, err := natstest.Connect(t, s).SubscribeSync(replica.StatsSubject(replica.DefaultBucket))
	if err != nil {
		t.Fatal(err)
	}
	// Until replica-1 has told the latency, and each other replica a word since.
	told := map[string][]replica.RouterStats{}
	for deadline := time.Now().Add(5 * time.Second); ; {
		m, err := heartbeats.NextMsg(time.Until(deadline))
		if err != nil {
			t.Fatalf("replica-1's latency and a word of each other replica since: %v (heard %v)", err, told)
		}
		var msg replica.StatsMessage
		if json.Unmarshal(m.Data, &msg) != nil || msg.ID == "" {
			continue
		}
		if msg.ID == "replica-1" {
			if r := msg.Routers; len(r) == 1 && r[0].Router == "/azure/gpt4/" && r[0].LatencyMS == 120 && r[0].Headroom != nil {
				told = map[string][]replica.RouterStats{"replica-1": r}
			}
			continue
		}
		if told["replica-1"] != nil {
			told[msg.ID] = msg.Routers
		}
		if len(told) == 3 {
			break
		}
	}
	for _, id := range []string{"replica-2", "replica-3"} {
		if r := told[id]; len(r) != 0 {
			t.Errorf("%s, idle, told %+v: want no router", id, r)
		}
	}
}

// TestAWordToldOnAFailureNamesOnlyTheRoutersChangedSinceTheLast: the
// JSON word a failure is told in at once names the router that failed,
// not every router the replica counts (with a thousand routers that was
// 100 KB each replica decoded per failure); the next heartbeat is whole.
func TestAWordToldOnAFailureNamesOnlyTheRoutersChangedSinceTheLast(t *testing.T) {
	s, _, nc, _ := heardFleet(t, 1)
	words, err := natstest.Connect(t, s).SubscribeSync(replica.StatsSubject(replica.DefaultBucket))
	if err != nil {
		t.Fatal(err)
	}
	for _, router := range []string{"/azure/gpt4/", "/azure/gpt35turbo/"} {
		if _, err := nc.Request(replica.DefaultSubject, fmt.Appendf(nil, `{"gl_path":%q,"egress_status_code":200}`, router), 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	next := func(what string, want func(replica.StatsMessage) bool) replica.StatsMessage {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); ; {
			m, err := words.NextMsg(time.Until(deadline))
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			var msg replica.StatsMessage
			if json.Unmarshal(m.Data, &msg) == nil && msg.ID == "replica-1" && want(msg) {
				return msg
			}
		}
	}
	paths := func(msg replica.StatsMessage) []string {
		var out []string
		for _, rs := range msg.Routers {
			out = append(out, rs.Router)
		}
		slices.Sort(out)
		return out
	}
	both := []string{"/azure/gpt35turbo/", "/azure/gpt4/"}
	next("a whole word with both routers' calls", func(msg replica.StatsMessage) bool {
		return !msg.Changed && slices.Equal(paths(msg), both)
	})

	if _, err := nc.Request(replica.DefaultSubject, []byte(`{"gl_path":"/azure/dud/","egress_status_code":502}`), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	told := next("the word told on the failure", func(msg replica.StatsMessage) bool { return msg.Changed })
	if got := paths(told); !slices.Equal(got, []string{"/azure/dud/"}) {
		t.Errorf("the word told on the failure names %v, want only /azure/dud/", got)
	}
	if rs := told.Routers[0]; rs.Failures != 1 || len(rs.Failing) != 1 {
		t.Errorf("it tells /azure/dud/ with %d failures, %d failing, want 1 and 1", rs.Failures, len(rs.Failing))
	}
	whole := next("the next whole word", func(msg replica.StatsMessage) bool { return !msg.Changed })
	if got := paths(whole); !slices.Equal(got, append([]string{"/azure/dud/"}, both...)) {
		t.Errorf("the next whole word names %v, want all three", got)
	}
}
