package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/replica"
)

// sessionPools are a pool keyed by a header the client names and one by
// gecholog's session.
const sessionPools = `{"pools":[
	{"ingress":"/azure/","affinity":{"header":"X-Conversation-Id","load_factor":3},"routers":[{"path":"/azure/a/"},{"path":"/azure/b/"}]},
	{"ingress":"/openai/","affinity":"session","routers":[{"path":"/openai/a/"},{"path":"/openai/b/"}]}]}`

// TestExplainAndStatusSayEachPoolsAffinityAndTheSessionCounts asks a
// running replica, after calls with and without a session header:
// explain names the pool's header and what it shows; status names every
// pool's affinity and each replica's session counts, as a table and as
// JSON; none prints a header's value.
func TestExplainAndStatusSayEachPoolsAffinityAndTheSessionCounts(t *testing.T) {
	t.Parallel()
	is := is.New(t)
	s := natstest.Start(t)
	pools := writeFile(t, "pools.json", []byte(sessionPools))
	r := startMetricsReplica(t, s.ClientURL(), "BROKER_POOLS", pools, "BROKER_ID", "replica-1")
	waitReady(t, r)
	ops := env("NATS_URL", s.ClientURL(), "BROKER_METRICS_ADDR", r.addr, "BROKER_POOLS", pools)
	nc := natstest.Connect(t, s)
	const conversation, session = "conv-SECRET-41", "GWSECRET_1696681410696216000_7_3"
	var answers []string
	for _, msg := range []string{
		`{"gl_path":"/azure/","ingress_headers":{"X-Conversation-Id":["` + conversation + `"]}}`,
		`{"gl_path":"/azure/","ingress_headers":{"x-conversation-id":["` + conversation + `"]}}`,
		`{"gl_path":"/azure/","ingress_headers":{"Authorization":["Bearer sk-1"]}}`, // no key
		`{"gl_path":"/openai/","ingress_headers":{"Session-Id":["` + session + `"]}}`,
	} {
		m, err := nc.Request("coburn.gl.broker", []byte(msg), 2*time.Second)
		is.NoErr(err)
		answers = append(answers, string(m.Data))
	}
	is.Equal(answers[0], answers[1]) // the conversation's calls on one router

	table, _, err := runOp(ops, "explain", "/azure/")
	is.NoErr(err)
	says(t, "explain /azure/", table, "\nSession affinity on header X-Conversation-Id, load factor 3: a keyed call goes to its session's router (the next in its order when that one is over its bound); this shows the choice for calls without a key\n")
	x, err := explainJSON(t, ops, "/openai/")
	is.NoErr(err)
	is.Equal(x.Affinity, &replica.ExplainedAffinity{Session: true, Header: "Session-Id", LoadFactor: 2, TTLSeconds: 600}) // the session header the replica reads, the default bound

	// Where one session goes, asked by its value.
	asked, _, err := runOp(ops, "explain", "/azure/", "--session", conversation)
	is.NoErr(err)
	says(t, "explain --session", asked, "\nThe session asked: its next call goes to "+routerOf(t, answers[0])+", its session's router by its order\n")
	x, err = explainJSON(t, env("NATS_URL", s.ClientURL(), "BROKER_METRICS_ADDR", r.addr), "/openai/")
	is.NoErr(err)
	is.Equal(x.Session, nil) // none asked, none said
	const notSession = "conv-SECRET-not-gecholog's"
	malformed, _, err := runOp(ops, "explain", "/openai/", "--session", notSession, "--json")
	is.NoErr(err)
	var y replica.Explained
	is.NoErr(json.Unmarshal([]byte(malformed), &y))
	is.Equal(y.Session, &replica.ExplainedSession{NoKey: "malformed"}) // not a gecholog session id: no key

	var out string
	natstest.Eventually(t, 10*time.Second, func() bool {
		out, _, err = runOp(ops, "status")
		return err == nil && strings.Contains(strings.Join(strings.Fields(out), " "), "replica-1 3 0 1")
	}, "status shows the replica's session counts; it says %s", &out)
	t.Logf("broker status:\n%s", out)
	says(t, "status", out, "\nsession affinity: /azure/ by header X-Conversation-Id, load factor 3; /openai/ by gecholog's session header Session-Id, load factor 2\n")
	says(t, "status", out, "sessions since each replica started: 3 keyed (0 of them spilled to the next router in their order), 1 without a key, over 1 replica\n")

	doc, _, err := runOp(ops, "status", "--json")
	is.NoErr(err)
	var rows []struct {
		Ingress  string                     `json:"ingress"`
		Affinity *replica.ExplainedAffinity `json:"affinity"`
	}
	is.NoErr(json.Unmarshal([]byte(doc), &rows))
	is.Equal(len(rows), 4)
	is.Equal(rows[0].Affinity, &replica.ExplainedAffinity{Header: "X-Conversation-Id", LoadFactor: 3}) // each row names its pool's affinity
	is.Equal(rows[3].Affinity, &replica.ExplainedAffinity{Session: true, Header: "Session-Id", LoadFactor: 2, TTLSeconds: 600})

	replicas, _, err := runOp(ops, "status", "--replicas", "--json")
	is.NoErr(err)
	var told []replica.ReplicaRevision
	is.NoErr(json.Unmarshal([]byte(replicas), &told))
	is.Equal(len(told), 1)
	is.Equal(told[0].Sessions, &replica.SessionsTold{Keyed: 3, NoKey: 1, Header: "Session-Id"}) // for scripts

	for what, printed := range map[string]string{"explain": table, "explain --session": asked, "explain --session --json": malformed, "status": out, "status --json": doc, "status --replicas --json": replicas} {
		for _, value := range []string{conversation, notSession, "GWSECRET", "sk-1"} {
			if strings.Contains(printed, value) {
				t.Errorf("%s prints the header value %q", what, value)
			}
		}
	}
}

// routerOf is the router a processor answer names.
func routerOf(t *testing.T, answer string) string {
	t.Helper()
	var r struct {
		GLPath string `json:"gl_path"`
	}
	if err := json.Unmarshal([]byte(answer), &r); err != nil || r.GLPath == "" {
		t.Fatalf("the answer %q names no router (%v)", answer, err)
	}
	return r.GLPath
}
