package ops

import (
	"encoding/json"
	"math"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/replica"
)

// TestStatusHasHeardTheFleetOnceEveryReplicaEachNamesHasSpoken shows when a
// one-shot status stops listening before its heartbeat's length: once it
// has heard as many replicas as any of them says the fleet has, and never
// on the word of a replica that does not say.
func TestStatusHasHeardTheFleetOnceEveryReplicaEachNamesHasSpoken(t *testing.T) {
	peers := func(n int) *int { return &n }
	for _, tc := range []struct {
		name  string
		heard map[string]*int // replica → the peers it told (nil: it did not say)
		all   bool
	}{
		{"none heard", nil, false},
		{"a replica alone", map[string]*int{"a": peers(0)}, true},
		{"a replica that hears another not yet heard", map[string]*int{"a": peers(1)}, false},
		{"both", map[string]*int{"a": peers(1), "b": peers(1)}, true},
		{"one of three whose peers heard only one other", map[string]*int{"a": peers(1), "b": peers(2)}, false},
		{"a replica from before Peers", map[string]*int{"a": nil}, false},
		{"a forged fleet larger than status keeps", map[string]*int{"a": peers(1 << 40)}, false},
		{"a forged fleet that overflows", map[string]*int{"a": peers(math.MaxInt)}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			is := is.New(t)
			f := &fleet{heard: map[string]heardStats{}}
			for id, p := range tc.heard {
				f.heard[id] = heardStats{at: time.Now(), msg: replica.StatsMessage{ID: id, Peers: p}}
			}
			is.Equal(f.all(), tc.all)
		})
	}
}

// TestAReplicaThatSaysGoodbyeIsNeitherHeardNorWaitedFor: disable and enable
// wait for every replica heard to say it holds their write; one that says
// it stops is forgotten at once, with what it said it took, and the wait
// hears of it (news), as it hears of a replica first heard, of a new take
// of its router and of a new count of a replica's peers, but not of a word
// that says nothing new.
func TestAReplicaThatSaysGoodbyeIsNeitherHeardNorWaitedFor(t *testing.T) {
	is := is.New(t)
	const router = "/azure/gpt4/"
	f := newFleet("gl_broker")
	f.hearTaken(router)
	news := func() bool {
		select {
		case <-f.news:
			return true
		default:
			return false
		}
	}
	word := func(msg replica.StatsMessage) {
		t.Helper()
		data, err := json.Marshal(msg)
		is.NoErr(err)
		f.hear(data)
	}
	peers := func(n int) *int { return &n }
	took := []replica.TakenTold{{Router: router, Revision: 7, Phase: "manual"}}

	word(replica.StatsMessage{ID: "a", Peers: peers(1), Taken: took})
	is.True(news()) // a replica first heard
	word(replica.StatsMessage{ID: "b", Peers: peers(1)})
	is.True(news()) // another
	word(replica.StatsMessage{ID: "b", Peers: peers(1)})
	is.True(!news()) // nothing new
	word(replica.StatsMessage{ID: "b", Peers: peers(2)})
	is.True(news()) // a new count of its peers
	word(replica.StatsMessage{ID: "b", Peers: peers(2), Taken: took})
	is.True(news()) // b took the write
	c := f.confirmed(7, broker.Manual, time.Now())
	is.Equal(c.confirmed, []string{"a", "b"})

	word(replica.StatsMessage{ID: "a", Bye: true})
	is.True(news()) // a stops
	c = f.confirmed(7, broker.Manual, time.Now())
	is.Equal(c.heard, []string{"b"})
	_, held := f.held["a"]
	is.True(!held) // what a said it took is forgotten with it
	word(replica.StatsMessage{ID: "ghost", Bye: true})
	is.True(!news()) // a goodbye of a replica never heard is no news
}

// TestStatusListensAsLongAsTheFleetsHeartbeatAndKeepsAWordForThree: a
// fleet of more than a dozen spaces its heartbeats (replica.heartbeat), and
// says how far apart (Every); status listens a quarter more than the
// longest told, and keeps a replica's word for three of its heartbeats,
// both held within what a replica may say (broker.MaxHeartbeat), since
// anyone may publish there.
func TestStatusListensAsLongAsTheFleetsHeartbeatAndKeepsAWordForThree(t *testing.T) {
	is := is.New(t)
	now := time.Now()
	f := newFleet("gl_broker")
	is.Equal(f.listenFor(), fleetListen) // none heard: a second's heartbeat
	word := func(id string, every int64) heardStats {
		return heardStats{at: now, msg: replica.StatsMessage{ID: id, Every: every}}
	}
	f.heard["small"] = word("small", 0)
	is.Equal(f.listenFor(), fleetListen) // a replica that says nothing keeps a second
	f.heard["large"] = word("large", 2000)
	is.Equal(f.listenFor(), 2500*time.Millisecond) // 2 s and a quarter
	f.heard["forged"] = word("forged", math.MaxInt64)
	is.Equal(f.listenFor(), broker.MaxHeartbeat*5/4) // held
	for _, tc := range []struct {
		id     string
		stands time.Duration // how long its word stands
	}{{"small", broker.PeerSilence}, {"large", 6 * time.Second}, {"forged", 3 * broker.MaxHeartbeat}} {
		h := f.heard[tc.id]
		is.True(h.stands(now.Add(tc.stands)))                     // its word stands three heartbeats
		is.True(!h.stands(now.Add(tc.stands + time.Millisecond))) // and no longer
	}
}

// TestStatusTakesTheCountsOfTheBinaryWordsBetweenWholeOnes: a busy replica
// tells its whole word at its heartbeat and its counts, binary, every few
// milliseconds between; status shows the newest counts with the latency
// of the last whole word, and takes a replica by its whole word only.
func TestStatusTakesTheCountsOfTheBinaryWordsBetweenWholeOnes(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	nc := natstest.Connect(t, s)
	f := hearFleet(nc, replica.DefaultBucket)
	defer func() { _ = f.sub.Unsubscribe() }()
	subject := replica.StatsSubject(replica.DefaultBucket)
	whole, err := json.Marshal(replica.StatsMessage{ID: "replica-1", At: time.Now(), Routers: []replica.RouterStats{
		{Router: "/azure/gpt4/", Chosen: 1, LatencyMS: 50}, {Router: "/azure/dud/", Chosen: 2}}})
	is.NoErr(err)
	is.NoErr(nc.Publish(subject, whole))
	is.NoErr(nc.PublishMsg(replica.WordsMessage(subject,
		replica.Word{ID: "replica-1", At: time.Now(), Counts: []broker.Counts{{Router: "/azure/gpt4/", Chosen: 5, Reported: 1, Calls: 1}}},
		replica.Word{ID: "replica-9", At: time.Now(), Counts: []broker.Counts{{Router: "/azure/gpt4/", Chosen: 7}}})))
	is.NoErr(nc.Flush())
	routers := func(id string) []replica.RouterStats {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.heard[id].msg.Routers
	}
	natstest.Eventually(t, 5*time.Second, func() bool {
		rs := routers("replica-1")
		return len(rs) == 1 && rs[0].Chosen == 5
	}, "the binary word's counts")
	rs := routers("replica-1")[0]
	is.Equal(rs.Reported, int64(1))
	is.Equal(rs.Calls, int64(1))
	is.Equal(rs.LatencyMS, 50.0)           // the whole word's, kept
	is.Equal(len(routers("replica-9")), 0) // not heard whole: not taken
}
