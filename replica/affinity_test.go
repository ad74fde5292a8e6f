package replica_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/replica"
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
			m, err := nc.Request(replica.DefaultSubject, msg, 2*time.Second)
			is.NoErr(err)
			var r struct {
				GLPath string `json:"gl_path"`
			}
			is.NoErr(json.Unmarshal(m.Data, &r))
			if tr == 0 {
				first = r.GLPath
				routers[first] = true
			}
			is.Equal(r.GLPath, first) // every call of the session on its router
			tell(t, nc, r.GLPath, 200)
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
			m, err := nc.Request(replica.DefaultSubject, msg, 2*time.Second)
			is.NoErr(err)
			var r struct {
				GLPath string `json:"gl_path"`
			}
			is.NoErr(json.Unmarshal(m.Data, &r))
			if tr == 0 {
				first = r.GLPath
			}
			is.Equal(r.GLPath, first) // every call of the session on its router, by X-Gl-Session
			tell(t, nc, r.GLPath, 200)
		}
	}
	var keyed uint64
	for _, b := range rs.replicas {
		keyed += b.Sessions().Keyed
		is.Equal(b.Sessions().NoKey, uint64(0)) // every call had a key
	}
	is.Equal(keyed, uint64(calls)) // and each was chosen by it
}
