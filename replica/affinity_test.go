package replica_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
	"github.com/nats-io/nats-server/v2/server"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/standin"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/replica"
	"github.com/gecholog/broker/statuspage"
)

// TestASessionLandsOnOneRouterFromEveryReplica sends request contexts as
// gecholog does, with the client's headers, through the queue group of
// two replicas on a real server: each session's calls all go to one
// router, whichever replica answers.
func TestASessionLandsOnOneRouterFromEveryReplica(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	pool := broker.Pool{Ingress: "/azure/", Affinity: broker.Affinity{Session: true}, Routers: []broker.Router{
		{Path: "/azure/a/", Weight: 1}, {Path: "/azure/b/", Weight: 2}, {Path: "/azure/c/", Weight: 1}}}
	rs := runReplicas(t, replica.Config{NATS: natsconn.Settings{Servers: s.ClientURL()}, Pools: []broker.Pool{pool},
		Policy: broker.Policy{DisabledTime: time.Minute}}, 2)
	nc := natstest.Connect(t, s)
	routers := map[string]bool{}
	for session := range 40 {
		var first string
		for tr := range 6 {
			msg := fmt.Appendf(nil, `{"gl_path":"/azure/","ingress_headers":{"Api-Key":["sk-%d"],"Session-Id":["AAA00001_%d_%d_%d"]}}`,
				tr, 1696681410696216000+session, session%3, tr)
			got := askWith(t, nc, msg)
			if tr == 0 {
				first = got
				routers[first] = true
			}
			is.Equal(got, first) // every call of the session on its router
			tell(t, nc, got, 200)
		}
	}
	is.Equal(len(routers), 3) // the sessions spread over the routers
	for i, b := range rs.replicas {
		keyed := b.Sessions().Keyed
		t.Logf("replica-%d chose %d keyed calls", i+1, keyed)
		is.True(keyed > 0) // both replicas chose calls of the sessions
		is.Equal(b.Sessions().NoKey, uint64(0))
	}
}

// TestASessionIsKeyedByTheSessionHeaderTheReplicaIsGiven: gecholog's
// session_id_header may name another header than Session-Id; replicas
// given it pin each session by that header, and read no other: the
// Session-Id each call also carries names a new session every call.
func TestASessionIsKeyedByTheSessionHeaderTheReplicaIsGiven(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	pool := broker.Pool{Ingress: "/azure/", Affinity: broker.Affinity{Session: true}, Routers: []broker.Router{
		{Path: "/azure/a/", Weight: 1}, {Path: "/azure/b/", Weight: 2}, {Path: "/azure/c/", Weight: 1}}}
	rs := runReplicas(t, replica.Config{NATS: natsconn.Settings{Servers: s.ClientURL()}, Pools: []broker.Pool{pool},
		Policy: broker.Policy{DisabledTime: time.Minute}, SessionHeader: "X-Gl-Session"}, 2)
	nc := natstest.Connect(t, s)
	calls := 0
	for session := range 30 {
		var first string
		for tr := range 6 {
			calls++
			msg := fmt.Appendf(nil, `{"gl_path":"/azure/","ingress_headers":{"Session-Id":["BBB00002_%d_1_0"],"x-gl-session":["AAA00001_%d_%d_%d"]}}`,
				calls, 1696681410696216000+session, session%3, tr)
			got := askWith(t, nc, msg)
			if tr == 0 {
				first = got
			}
			is.Equal(got, first) // every call of the session on its router, by X-Gl-Session
			tell(t, nc, got, 200)
		}
	}
	var keyed uint64
	for _, b := range rs.replicas {
		keyed += b.Sessions().Keyed
		is.Equal(b.Sessions().NoKey, uint64(0)) // every call had a key
	}
	is.Equal(keyed, uint64(calls)) // and each was chosen by it
}

// weightedSessionConfig is replicas on s serving /azure/ with "session"
// affinity over a, b and c, weighted 1, 2 and 1.
func weightedSessionConfig(s *server.Server) replica.Config {
	pool := broker.Pool{Ingress: "/azure/", Affinity: broker.Affinity{Session: true}, Routers: []broker.Router{
		{Path: "/azure/a/", Weight: 1}, {Path: "/azure/b/", Weight: 2}, {Path: "/azure/c/", Weight: 1}}}
	return replica.Config{NATS: natsconn.Settings{Servers: s.ClientURL()}, Pools: []broker.Pool{pool},
		Policy: broker.Policy{DisabledTime: time.Minute}}
}

// TestTheFirstCallHeardOnTheLogPinsTheSessionOnEveryReplica publishes a
// session's first call on gecholog's transaction log, on a router other
// than the one the session's order picks (the first call has no session
// header, so the pool's strategy chose it): both replicas hear it, and
// send the session's next calls there, whichever answers.
func TestTheFirstCallHeardOnTheLogPinsTheSessionOnEveryReplica(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	cfg := weightedSessionConfig(s)
	const session = "AAA00001_1696681410696216777_4"
	// Where the session's order would send it: another router is where
	// only the log can send it.
	order, err := broker.New(broker.Config{Pools: cfg.Pools, Policy: cfg.Policy})
	is.NoErr(err)
	first := order.Members()[order.ChooseSession([]byte("/azure/"), []byte(session))]
	order.Close(context.Background())
	named := "/azure/a/"
	if first == named {
		named = "/azure/c/"
	}
	rs := runReplicas(t, cfg, 2)
	nc := natstest.Connect(t, s)
	finish(t, nc, standin.Finished{Ingress: "/azure/", Router: named, Session: session + "_0"})
	rs.every(t, 5*time.Second, func(b *broker.Broker) bool {
		for _, r := range b.SessionRouters() {
			if r.Router == named && r.Pinned == 1 {
				return true
			}
		}
		return false
	}, "the session remembered on "+named)

	// Its next calls, through the queue group, until each replica has
	// answered one.
	answered := func() bool {
		for _, b := range rs.replicas {
			if b.Sessions().Remembered == 0 {
				return false
			}
		}
		return true
	}
	for call := 1; !answered(); call++ {
		if call > 200 {
			t.Fatalf("after %d calls, a replica has answered none of the session's", call-1)
		}
		msg := fmt.Appendf(nil, `{"gl_path":"/azure/","ingress_headers":{"Api-Key":["sk-1"],"Session-Id":["%s_%d"]}}`, session, call)
		got := askWith(t, nc, msg)
		is.Equal(got, named) // the router the log named, not the session's order's (first)
		tell(t, nc, got, 200)
	}
	for i, b := range rs.replicas {
		t.Logf("replica-%d sent %d calls where the log said (the session's order says %s)", i+1, b.Sessions().Remembered, first)
	}
}

// TestMetricsAndThePageShowTheSessionsPinnedPerRouterAndTheirMoves
// publishes, as gecholog's logger does, calls of three sessions, one of
// which moves: /metrics has the sessions pinned per router, the moves in
// and out, the calls sent where the log said, and the status page's
// routers say the same; no series is labelled by a session.
func TestMetricsAndThePageShowTheSessionsPinnedPerRouterAndTheirMoves(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	pool := broker.Pool{Ingress: "/azure/", Affinity: broker.Affinity{Session: true}, Routers: []broker.Router{
		{Path: "/azure/a/", Weight: 1}, {Path: "/azure/b/", Weight: 1}, {Path: "/azure/c/", Weight: 1}}}
	rs := runReplicas(t, replica.Config{NATS: natsconn.Settings{Servers: s.ClientURL()}, Pools: []broker.Pool{pool},
		Policy: broker.Policy{DisabledTime: time.Minute}, MetricsAddr: "127.0.0.1:0"}, 1)
	nc := natstest.Connect(t, s)
	const moving = "AAA00001_1696681410696216001_1"
	finish(t, nc, standin.Finished{Ingress: "/azure/", Router: "/azure/a/", Session: moving + "_0"})
	finish(t, nc, standin.Finished{Ingress: "/azure/", Router: "/azure/a/", Session: "AAA00001_1696681410696216002_2_0"})
	finish(t, nc, standin.Finished{Ingress: "/azure/", Router: "/azure/b/", Session: "AAA00001_1696681410696216003_3_0"})
	finish(t, nc, standin.Finished{Ingress: "/azure/", Router: "/azure/b/", Session: moving + "_1"}) // from a to b
	rs.every(t, 5*time.Second, func(b *broker.Broker) bool {
		for _, r := range b.SessionRouters() {
			if r.Router == "/azure/b/" && r.Pinned == 2 && r.MovedIn == 1 {
				return true
			}
		}
		return false
	}, "two sessions pinned on /azure/b/, one moved in")
	// The moved session's next call goes where the log last heard it:
	// without "stay", its home is where it was first heard (a), which is
	// enabled, so it goes back there.
	m, err := nc.Request(replica.DefaultSubject, []byte(`{"gl_path":"/azure/","ingress_headers":{"Session-Id":["`+moving+`_2"]}}`), 2*time.Second)
	is.NoErr(err)
	is.True(strings.Contains(string(m.Data), `"/azure/a/"`)) // back to its home
	tell(t, nc, "/azure/a/", 200)

	addr := rs.listener(t, 0)
	metrics := get(t, "http://"+addr+"/metrics")
	for series, want := range map[string]float64{
		`broker_sessions_pinned{router="/azure/a/"}`:                     1,
		`broker_sessions_pinned{router="/azure/b/"}`:                     2,
		`broker_sessions_pinned{router="/azure/c/"}`:                     0,
		`broker_session_moves_total{direction="in",router="/azure/b/"}`:  1,
		`broker_session_moves_total{direction="out",router="/azure/a/"}`: 1,
		`broker_session_moves_total{direction="in",router="/azure/a/"}`:  0,
		`broker_session_moves_total{direction="out",router="/azure/b/"}`: 0,
		`broker_session_calls_total{outcome="remembered"}`:               1,
		`broker_sessions_evicted_total`:                                  0,
	} {
		is.Equal(metricValue(t, metrics, series), want) // series as the log said
	}
	says(t, "/metrics", metrics, "# HELP broker_sessions_pinned Sessions this replica remembers")
	says(t, "/metrics", metrics, "# HELP broker_session_moves_total Sessions heard")
	says(t, "/metrics", metrics, "# HELP broker_sessions_evicted_total Sessions this replica forgot")
	if strings.Contains(metrics, "1696681410696216") {
		t.Fatalf("/metrics names a session:\n%s", metrics)
	}

	var snap statuspage.Snapshot
	is.NoErr(json.Unmarshal([]byte(get(t, "http://"+addr+"/status.json")), &snap))
	got := map[string]statuspage.RouterSessions{}
	for _, r := range snap.Pools[0].Routers {
		is.True(r.Sessions != nil) // every router of a pool that remembers sessions
		got[r.Router] = *r.Sessions
	}
	is.Equal(got, map[string]statuspage.RouterSessions{ // the page says what /metrics says
		"/azure/a/": {Pinned: 1, MovedOut: 1}, "/azure/b/": {Pinned: 2, MovedIn: 1}, "/azure/c/": {}})
}

// TestConversationsStartWhereTheFewestSessionsAreOnEveryReplica starts 200
// conversations through the queue group of two replicas, each as gecholog
// makes it: a first call without a session id, its response context, and
// its transaction naming the session gecholog made: the pool's sessions
// end within one of their weight's share on every replica (weighted random
// would leave each router about ±7 off).
func TestConversationsStartWhereTheFewestSessionsAreOnEveryReplica(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	cfg := weightedSessionConfig(s)
	rs := runReplicas(t, cfg, 2)
	nc := natstest.Connect(t, s)
	pinned := func(b *broker.Broker) map[string]int {
		out := map[string]int{}
		for _, r := range b.SessionRouters() {
			out[r.Router] = r.Pinned
		}
		return out
	}
	const sessions = 200
	for i := range sessions {
		router := askWith(t, nc, []byte(`{"gl_path":"/azure/","ingress_headers":{"Api-Key":["sk-1"]}}`)) // no session yet
		tell(t, nc, router, 200)
		finish(t, nc, standin.Finished{Ingress: "/azure/", Router: router, Session: fmt.Sprintf("AAA00001_%d_1_0", 1696681410696216000+i)})
		rs.every(t, 5*time.Second, func(b *broker.Broker) bool {
			n := 0
			for _, p := range pinned(b) {
				n += p
			}
			return n == i+1
		}, fmt.Sprintf("session %d heard", i))
	}
	for i, b := range rs.replicas {
		got := pinned(b)
		t.Logf("replica-%d: sessions pinned %v", i+1, got)
		for r, want := range map[string]int{"/azure/a/": 50, "/azure/b/": 100, "/azure/c/": 50} {
			is.True(got[r] >= want-1 && got[r] <= want+1) // within one of its weight's share
		}
	}
}
