package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/internal/standin"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/replica"
)

// TestStatusShowsTheSessionsPinnedPerRouterAndTheirMovesHeldToTheirBounds
// runs two replicas, publishes calls of three sessions of a "session"
// pool on gecholog's logger subject (one session moves), and forges a
// replica's counts on the stats subject: status shows per router of the
// session pool the sessions pinned and the moves, as every replica tells
// them (the largest, not their sum), with a forged count held to what a
// replica can remember and nothing wrapped; a pool without affinity shows
// none.
func TestStatusShowsTheSessionsPinnedPerRouterAndTheirMovesHeldToTheirBounds(t *testing.T) {
	t.Parallel()
	is := is.New(t)
	s := natstest.Start(t)
	pools := writeFile(t, "pools.json", []byte(sessionPools))
	replicas := []*metricsReplica{startMetricsReplica(t, s.ClientURL(), "BROKER_POOLS", pools, "BROKER_ID", "replica-1"),
		startMetricsReplica(t, s.ClientURL(), "BROKER_POOLS", pools, "BROKER_ID", "replica-2")}
	waitReady(t, replicas...)
	ops := env("NATS_URL", s.ClientURL(), "BROKER_POOLS", pools)
	nc := natstest.Connect(t, s)
	// Both replicas hear the log before the sessions' calls are published:
	// a call of a pool that remembers no session, until each has read one.
	for _, r := range replicas {
		natstest.Eventually(t, 10*time.Second, func() bool {
			is.NoErr(nc.Publish("coburn.gl.logger", standin.Transaction(standin.Finished{Ingress: "/azure/", Router: "/azure/a/"})))
			fs := r.metrics(t)
			return fs.sum("broker_transactions_total", "outcome", "read")+fs.sum("broker_transactions_total", "outcome", "shared") > 0
		}, "the replica hears the log")
	}
	const moving = "GWSECRET_1696681410696216001_1"
	taken := func(r *metricsReplica) float64 {
		fs := r.metrics(t)
		return fs.sum("broker_transactions_total", "outcome", "read") + fs.sum("broker_transactions_total", "outcome", "shared")
	}
	before := make([]float64, len(replicas))
	for i, r := range replicas {
		before[i] = taken(r)
	}
	for _, f := range []standin.Finished{
		{Ingress: "/openai/", Router: "/openai/a/", Session: moving + "_0"},
		{Ingress: "/openai/", Router: "/openai/a/", Session: "GWSECRET_1696681410696216002_2_0"},
		{Ingress: "/openai/", Router: "/openai/b/", Session: "GWSECRET_1696681410696216003_3_0"},
	} {
		is.NoErr(nc.Publish("coburn.gl.logger", standin.Transaction(f)))
	}
	// A session's next call comes after its last one ended, seconds
	// later, so every replica has heard the first: a call heard before an
	// earlier one of its session is older news and moves nothing
	// (broker/memory.go), which calls published back to back, read by two
	// replicas, can be.
	for i, r := range replicas {
		natstest.Eventually(t, 10*time.Second, func() bool { return taken(r) >= before[i]+3 }, "the replica takes the sessions' first calls")
	}
	is.NoErr(nc.Publish("coburn.gl.logger", standin.Transaction(standin.Finished{Ingress: "/openai/", Router: "/openai/b/", Session: moving + "_1"}))) // from a to b
	cells := func(out, router string) string {
		f := strings.Fields(tableRow(out, router))
		return strings.Join(f[max(len(f)-7, 0):], " ") // the SESSIONS column, last
	}
	var out string
	var err error
	defer func() {
		if t.Failed() {
			t.Logf("broker status said last:\n%s", out)
		}
	}()
	natstest.Eventually(t, 10*time.Second, func() bool {
		out, _, err = runOp(ops, "status")
		// Each replica tells what it remembers once a second: one may
		// have told the move to b before it heard the move from a.
		return err == nil && cells(out, "/openai/b/") == "2 pinned (moved in 1, out 0)" && cells(out, "/openai/a/") == "1 pinned (moved in 0, out 1)"
	}, "status shows two sessions pinned on /openai/b/ and one on /openai/a/")
	t.Logf("broker status:\n%s", out)
	is.True(strings.HasSuffix(strings.TrimSpace(tableRow(out, "/azure/a/")), " -")) // a pool keyed by a header remembers no session

	// explain says the pool's memory, and that the moved session goes back
	// to where it was first heard, by the log and not by its order.
	explainer := env("NATS_URL", s.ClientURL(), "BROKER_METRICS_ADDR", replicas[0].addr, "BROKER_POOLS", pools)
	said, _, err := runOp(explainer, "explain", "/openai/", "--session", moving+"_2")
	is.NoErr(err)
	says(t, "explain --session", said, "Session affinity on gecholog's session header Session-Id (its first three parts), load factor 2, sessions remembered 10m0s after their last call (ttl), a session that moved goes back to its first router when that one can take it:")
	says(t, "explain --session", said, "\nThe session asked: its next call goes to /openai/a/, where gecholog's transaction log says the session goes back to (remembered)\n")
	x, err := explainJSON(t, explainer, "/openai/")
	is.NoErr(err)
	is.Equal(x.Affinity, &replica.ExplainedAffinity{Session: true, Header: "Session-Id", LoadFactor: 2, TTLSeconds: 600}) // the pool's ttl, the default
	asked, _, err := runOp(explainer, "explain", "/openai/", "--session", moving+"_2", "--json")
	is.NoErr(err)
	var y replica.Explained
	is.NoErr(json.Unmarshal([]byte(asked), &y))
	is.Equal(y.Session, &replica.ExplainedSession{Router: "/openai/a/", Home: "/openai/a/", Remembered: true})
	fresh, _, err := runOp(explainer, "explain", "/openai/", "--session", "GWSECRET_1696681410696216009_9_0")
	is.NoErr(err)
	says(t, "explain --session", fresh, ", its session's router by its order\n") // a session the log never told of

	// A forged word: more sessions pinned than a replica remembers, fewer
	// than none, and moves at the largest count.
	forged := replica.StatsMessage{ID: "replica-forged", At: time.Now(), Routers: []replica.RouterStats{
		{Router: "/openai/a/", Sessions: &replica.RouterSessionsTold{Pinned: 1 << 62, MovedIn: ^uint64(0), MovedOut: ^uint64(0)}},
		{Router: "/openai/b/", Sessions: &replica.RouterSessionsTold{Pinned: -7}},
	}}
	data, err := json.Marshal(forged)
	is.NoErr(err)
	// Told every 20 ms, as a replica tells, while status listens.
	stop := make(chan struct{})
	told := make(chan struct{})
	go func() {
		defer close(told)
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
				_ = nc.Publish("broker.stats.gl_broker", data)
			}
		}
	}()
	defer func() { close(stop); <-told }()
	natstest.Eventually(t, 10*time.Second, func() bool {
		out, _, err = runOp(ops, "status")
		return err == nil && strings.HasPrefix(cells(out, "/openai/a/"), "100000 pinned")
	}, "status holds the forged count to 100000")
	is.Equal(cells(out, "/openai/a/"), "100000 pinned (moved in 18446744073709551615, out 18446744073709551615)") // the largest count, not wrapped to a small one
	is.Equal(cells(out, "/openai/b/"), "2 pinned (moved in 1, out 0)")                                            // fewer than none changes nothing

	doc, _, err := runOp(ops, "status", "--json")
	is.NoErr(err)
	var rows []struct {
		Router   string                      `json:"router"`
		Sessions *replica.RouterSessionsTold `json:"sessions"`
	}
	is.NoErr(json.Unmarshal([]byte(doc), &rows))
	for _, r := range rows {
		switch r.Router {
		case "/openai/b/":
			is.Equal(r.Sessions, &replica.RouterSessionsTold{Pinned: 2, MovedIn: 1}) // for scripts
		case "/azure/a/", "/azure/b/":
			is.Equal(r.Sessions, nil) // none for a pool keyed by a header
		}
	}
	for what, printed := range map[string]string{"status": out, "status --json": doc, "explain --session": said, "explain --session --json": asked} {
		if strings.Contains(printed, "GWSECRET") || strings.Contains(printed, "1696681410696216") {
			t.Errorf("%s prints a session", what)
		}
	}
}
