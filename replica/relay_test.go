package replica_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/replica"
)

// A fleet of more than 12 relays its words: see words.go.
const relayedFleet = 13

// relayFleet starts n replicas named replica-01 to replica-n, of a pool
// that reads the fleet's calls in flight, each with its own log and stop,
// and waits until each hears all the others.
func relayFleet(t *testing.T, nc natsconn.Settings, n int) (rs *replicaSet, stops []func()) {
	t.Helper()
	rs = &replicaSet{t: t}
	for i := range n {
		logs := &syncBuffer{}
		r, stop := startReplica(t, replica.Config{NATS: nc, ID: fmt.Sprintf("replica-%02d", i+1),
			Policy: minute, Pools: []broker.Pool{poolOf("least-busy", "a", "b", "c")}, Logger: jsonLogger(logs)})
		rs.replicas, rs.logs, stops = append(rs.replicas, r.Broker()), append(rs.logs, logs), append(stops, stop)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for i, l := range rs.logs {
				t.Logf("replica-%02d logged:\n%s", i+1, l.String())
			}
		}
	})
	rs.every(t, 10*time.Second, func(b *broker.Broker) bool { return b.Peers() == n-1 }, "every other replica heard")
	return rs, stops
}

// relays says whether replica i's log says it relays now.
func (rs *replicaSet) relays(i int) bool {
	out := rs.logs[i].String()
	return strings.Count(out, "relaying the fleet's counts: its name comes first") > strings.Count(out, "no longer relaying the fleet's counts")
}

// wordNames is the names of the replicas whose words m carries, one a
// word (nil: none).
func wordNames(m *nats.Msg) []string {
	var names []string
	for _, w := range replica.Words(m) {
		names = append(names, w.ID)
	}
	return names
}

// wordsHeard counts the messages of words, and the words in them, on a
// subject.
type wordsHeard struct {
	mu          sync.Mutex
	msgs, words int
	from        map[string]int
}

func hearWords(t *testing.T, nc *nats.Conn, subject string) *wordsHeard {
	t.Helper()
	h := &wordsHeard{from: map[string]int{}}
	subscribeFor(t, nc, subject, func(m *nats.Msg) {
		names := wordNames(m)
		if names == nil {
			return
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		h.msgs++
		h.words += len(names)
		for _, n := range names {
			h.from[n]++
		}
	})
	return h
}

func (h *wordsHeard) counts() (msgs, words int, from map[string]int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	from = map[string]int{}
	for k, v := range h.from {
		from[k] = v
	}
	return h.msgs, h.words, from
}

// aCallShowsOnEveryReplica asks for a call and waits until every replica
// counts it in flight within d, then reports it and waits until none
// does, three times.
func aCallShowsOnEveryReplica(t *testing.T, rs *replicaSet, nc *nats.Conn, d time.Duration) {
	t.Helper()
	for range 3 {
		router := ask(t, nc, "/azure/")
		rs.every(t, d, func(b *broker.Broker) bool { return inFlight(b, router) == 1 }, "the call in flight")
		tell(t, nc, router, 200)
		rs.every(t, d, func(b *broker.Broker) bool { return inFlight(b, router) == 0 }, "the call reported")
	}
}

// TestALargeFleetTellsItsWordsThroughOneRelay: in a fleet of 13, the
// replica whose name comes first relays, alone; the others tell it their
// words, and the stats subject carries its messages, each with many
// words, rather than one message per word; a call shows on every replica
// as it did.
func TestALargeFleetTellsItsWordsThroughOneRelay(t *testing.T) {
	s := natstest.Start(t)
	rs, _ := relayFleet(t, natsconn.Settings{Servers: s.ClientURL()}, relayedFleet)
	natstest.Eventually(t, 5*time.Second, func() bool {
		for i := range rs.logs {
			if rs.relays(i) != (i == 0) {
				return false
			}
		}
		return true
	}, "replica-01 relays, and no other")

	nc := natstest.Connect(t, s)
	toRelay := hearWords(t, nc, replica.RelaySubject(replica.DefaultBucket))
	onStats := hearWords(t, nc, replica.StatsSubject(replica.DefaultBucket))
	aCallShowsOnEveryReplica(t, rs, nc, time.Second)

	// Under load every replica's counts change every tick.
	l := startCallLoad(t, natstest.Connect(t, s), 8, time.Second)
	defer l.Finish()
	l.WaitAnswered(t, time.Now(), 100, 5*time.Second)
	relayFrom, _, _ := toRelay.counts()
	statsFrom, _, _ := onStats.counts()
	natstest.Eventually(t, 10*time.Second, func() bool {
		_, _, from := toRelay.counts()
		return len(from) == relayedFleet-1
	}, "words from every replica but the relay on the relay subject")
	natstest.Eventually(t, 10*time.Second, func() bool { m, _, _ := toRelay.counts(); return m-relayFrom >= 300 }, "300 words told to the relay")
	l.Finish()
	relayMsgs, _, from := toRelay.counts()
	statsMsgs, statsWords, _ := onStats.counts()
	if from["replica-01"] != 0 {
		t.Errorf("the relay told %d words on the relay subject; it gathers its own", from["replica-01"])
	}
	told, messages := relayMsgs-relayFrom, statsMsgs-statsFrom
	t.Logf("%d words told to the relay; %d messages of words on the stats subject, %.1f words each", told, messages, float64(statsWords)/float64(max(statsMsgs, 1)))
	// Told straight, each word would be a message of its own on the stats
	// subject: as many as were told to the relay.
	if messages*3 > told {
		t.Errorf("%d messages of words on the stats subject for %d words told to the relay: want at most a third as many", messages, told)
	}
}

// TestAFleetWhoseRelayPassesNothingOnTellsStraight: a forged replica whose
// name comes first becomes every replica's relay and passes nothing on;
// each replica that does not hear its word back within 100 ms tells it
// straight, on the stats subject, where no relay's message comes, and a
// call shows on every replica.
func TestAFleetWhoseRelayPassesNothingOnTellsStraight(t *testing.T) {
	s := natstest.Start(t)
	rs, _ := relayFleet(t, natsconn.Settings{Servers: s.ClientURL()}, relayedFleet)
	nc := natstest.Connect(t, s)
	forge := func() {
		data, err := json.Marshal(replica.StatsMessage{ID: "!forged", At: time.Now()})
		if err != nil {
			t.Fatal(err)
		}
		if err := nc.Publish(replica.StatsSubject(replica.DefaultBucket), data); err != nil {
			t.Fatal(err)
		}
	}
	forge()
	rs.every(t, 5*time.Second, func(b *broker.Broker) bool { return b.Relay() == "!forged" }, "the forged relay")
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // its word stands for three seconds: told again until the test ends
		defer close(done)
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				forge()
			}
		}
	}()
	defer func() { close(stop); <-done }()

	onStats := hearWords(t, nc, replica.StatsSubject(replica.DefaultBucket))
	aCallShowsOnEveryReplica(t, rs, nc, 2*time.Second)
	natstest.Eventually(t, 5*time.Second, func() bool { _, words, _ := onStats.counts(); return words > 0 }, "words told straight")
	straight := 0
	for i := range rs.logs {
		straight += countLines(rs.logs[i].String(), "telling the counts straight to every replica for a while: the relay did not pass on this replica's word within 100ms", time.Time{}, time.Now())
	}
	if straight == 0 {
		t.Error("no replica said it tells its counts straight")
	}
}

// TestARelayThatStopsHandsOverAtOnce: the relay says goodbye when it
// stops; the replica whose name comes next relays from then on, and a
// call shows on every replica left.
func TestARelayThatStopsHandsOverAtOnce(t *testing.T) {
	s := natstest.Start(t)
	rs, stops := relayFleet(t, natsconn.Settings{Servers: s.ClientURL()}, relayedFleet+1)
	natstest.Eventually(t, 5*time.Second, func() bool { return rs.relays(0) && !rs.relays(1) }, "replica-01 relays")
	stops[0]()
	rs.replicas, rs.logs = rs.replicas[1:], rs.logs[1:]
	natstest.Eventually(t, time.Second, func() bool { return rs.relays(0) }, "replica-02 relays")
	nc := natstest.Connect(t, s)
	aCallShowsOnEveryReplica(t, rs, nc, time.Second)
}

// TestAServerThatRefusesTheRelaySubjectIsSaidOnceAndTheWordsGoStraight:
// NATS users granted before the relay may not use its subject; each
// replica refused says so once, with the permission to grant, and tells
// its words straight, on the stats subject, so that a call still shows on
// every replica.
func TestAServerThatRefusesTheRelaySubjectIsSaidOnceAndTheWordsGoStraight(t *testing.T) {
	s := natstest.Start(t, func(o *server.Options) {
		deny := []string{replica.RelaySubject(replica.DefaultBucket)}
		o.Users = []*server.User{{Username: "broker", Password: "pw", Permissions: &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: []string{">"}, Deny: deny},
			Subscribe: &server.SubjectPermission{Allow: []string{">"}, Deny: deny},
		}}}
	})
	rs, _ := relayFleet(t, natsconn.Settings{Servers: s.ClientURL(), User: "broker", Password: "pw"}, relayedFleet)
	nc := natstest.Connect(t, s, nats.UserInfo("broker", "pw"))
	onStats := hearWords(t, nc, replica.StatsSubject(replica.DefaultBucket))
	aCallShowsOnEveryReplica(t, rs, nc, 2*time.Second)
	natstest.Eventually(t, 5*time.Second, func() bool { _, words, _ := onStats.counts(); return words > 0 }, "words told straight")
	const refused = "the NATS server refuses the relay subject: this replica tells its counts straight to every replica, which costs the fleet more as it grows"
	said := 0
	for i, l := range rs.logs {
		out := l.String()
		if n := strings.Count(out, refused); n > 1 {
			t.Errorf("replica-%02d said %d times that the server refuses the relay subject: once is enough", i+1, n)
		}
		if line, ok := logLine(out, refused); ok {
			said++
			says(t, "the hint", line["hint"].(string), "allow the replicas to publish and subscribe to broker.relay.gl_broker")
		}
		if strings.Contains(out, `"level":"ERROR"`) {
			t.Errorf("replica-%02d logged an error: the refusal is a warning, once", i+1)
		}
	}
	if said == 0 {
		t.Error("no replica said that the server refuses the relay subject")
	}
}
