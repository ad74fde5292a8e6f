package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/testutil/natstest"
)

func TestThePoolsFileGivesAPoolAffinity(t *testing.T) {
	file := func(affinity string) []byte {
		return []byte(`{"pools":[{"ingress":"/azure/",` + affinity + `"routers":[{"path":"/azure/a/"},{"path":"/azure/b/"}]}]}`)
	}
	for _, tc := range []struct {
		affinity string
		want     broker.Affinity
	}{
		{``, broker.Affinity{}},
		{`"affinity":"session",`, broker.Affinity{Session: true}},
		{`"affinity":{"header":"X-Conversation-Id"},`, broker.Affinity{Header: "X-Conversation-Id"}},
		{`"affinity":{"session":true,"load_factor":1.25},`, broker.Affinity{Session: true, LoadFactor: 1.25}},
		{`"affinity":null,`, broker.Affinity{}},
		{`"affinity":{"session":true,"ttl":"5m","stay":true},`, broker.Affinity{Session: true, TTL: 5 * time.Minute, Stay: true}},
	} {
		t.Run(tc.affinity, func(t *testing.T) {
			is := is.New(t)
			pools, err := decodePools(file(tc.affinity))
			is.NoErr(err)
			is.Equal(pools[0].Affinity, tc.want)
		})
	}
	for _, tc := range []struct{ affinity, want string }{
		{`"affinity":"conversation",`, `affinity "conversation": give "affinity": "session" or {"header": "X-Conversation-Id"}`},
		{`"affinity":{"header":"X-Id","ttl":"5m"},`, `pool "/azure/": affinity: "ttl" and "stay" apply to "session" affinity only`},
		{`"affinity":{"session":true,"ttl":"2s3"},`, `affinity: ttl "2s3": not a duration; give one such as "10m"`},
		{`"affinity":{"session":true,"ttl":"100ms"},`, `ttl 100ms: must be from 1s to 24h0m0s`},
		{`"affinity":{"session":true,"stay":"yes"},`, `affinity`},
		{`"affinity":{"session":true,"lifetime":"5m"},`, `unknown field "lifetime"`},
		{`"affinity":{"header":"X-Id:"},`, `pool "/azure/": affinity: header "X-Id:"`},
		{`"affinity":{"header":"X-Id","load_factor":100},`, `load factor 100: must be from 1.1 to 10`},
	} {
		t.Run(tc.affinity, func(t *testing.T) {
			_, err := decodePools(file(tc.affinity))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error saying %q", err, tc.want)
			}
		})
	}
}

// withIngressHeaders gives the broker's request processor entry
// ingress_headers, as a pool with affinity needs.
func withIngressHeaders(m map[string]any) {
	p := brokerEntry(m, "request")
	p["input_fields_include"] = append(p["input_fields_include"].([]any), "ingress_headers")
}

// A pool with affinity reads a client header, which gecholog sends only in
// ingress_headers; a session pool reads the header gecholog's
// session_id_header names. broker check says when the file keeps either
// from the broker, and what fixes it.
func TestCheckSaysWhatAPoolWithAffinityNeedsFromGLConfig(t *testing.T) {
	sessionPools := writeFile(t, "session.json", []byte(`{"pools":[{"ingress":"/azure/","affinity":"session","routers":[{"path":"/azure/gpt4/"},{"path":"/azure/gpt35turbo/"}]}]}`))
	headerPools := writeFile(t, "header.json", []byte(`{"pools":[{"ingress":"/azure/","affinity":{"header":"X-Conversation-Id"},"routers":[{"path":"/azure/gpt4/"},{"path":"/azure/gpt35turbo/"}]}]}`))
	withHeaders := brokenGLConfig(t, withIngressHeaders)
	otherSession := brokenGLConfig(t, func(m map[string]any) {
		withIngressHeaders(m)
		m["session_id_header"] = "X-Gl-Session"
	})
	const noHeaders = `advice: request.processors[0][0].input_fields_include: add "ingress_headers": pools /azure/ (%s) keep a conversation on one router by a client header, which gecholog sends the broker only in ingress_headers; ` +
		`without it no call has a key and each goes by the pool's strategy (the broker reads only the header the pool names, and never logs, keeps or publishes the others, the API key among them)`
	for _, tc := range []struct {
		name   string
		getenv func(string) string
		advice string // "": none
	}{
		{"session, no ingress_headers", env("BROKER_POOLS", sessionPools, "BROKER_GL_CONFIG", repoGLConfigFile), fmt.Sprintf(noHeaders, "session")},
		{"header, no ingress_headers", env("BROKER_POOLS", headerPools, "BROKER_GL_CONFIG", repoGLConfigFile), fmt.Sprintf(noHeaders, "header X-Conversation-Id")},
		{"session, ingress_headers", env("BROKER_POOLS", sessionPools, "BROKER_GL_CONFIG", withHeaders), ""},
		{"session, another session header", env("BROKER_POOLS", sessionPools, "BROKER_GL_CONFIG", otherSession),
			`advice: session_id_header: "X-Gl-Session", but the broker reads gecholog's session id from header "Session-Id": run the broker with BROKER_SESSION_HEADER=X-Gl-Session (-session-header), ` +
				`or set session_id_header to "Session-Id"; until then the calls of pools /azure/ have no session key and go by the pool's strategy`},
		{"session, the broker told the header", env("BROKER_POOLS", sessionPools, "BROKER_GL_CONFIG", otherSession, "BROKER_SESSION_HEADER", "X-Gl-Session"), ""},
		{"header, another session header", env("BROKER_POOLS", headerPools, "BROKER_GL_CONFIG", otherSession), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			is := is.New(t)
			var out bytes.Buffer
			is.NoErr(run(t.Context(), []string{"check"}, tc.getenv, &out, &bytes.Buffer{})) // advice alone does not fail the check
			got := lines(out.String())
			if tc.advice == "" {
				is.Equal(len(got), 1) // the ok line alone
				saysLast(t, "the ok line", got[0], ": ok (1 pool, 2 routers, subject coburn.gl.broker)")
				return
			}
			is.Equal(len(got), 2)
			is.Equal(got[0], tc.advice) // what to add or set, and why
		})
	}
}

// A session header that is no HTTP header name, or longer than 256
// bytes, is refused before anything starts, with one line naming the
// setting.
func TestSessionHeaderThatIsNoHeaderNameIsRefused(t *testing.T) {
	s := natstest.Start(t)
	for _, value := range []string{"Session Id", "Session-Id:", "", "Sessi\u00f3n", strings.Repeat("a", 257)} {
		for _, command := range []string{"serve", "check"} {
			t.Run(fmt.Sprintf("%s %.20q", command, value), func(t *testing.T) {
				is := is.New(t)
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				var out, logs syncBuffer
				err := run(ctx, []string{command, "--session-header=" + value}, env("NATS_URL", s.ClientURL()), &out, &logs)
				is.True(err != nil) // refused
				saysFirst(t, "the error", err.Error(), "session-header (BROKER_SESSION_HEADER) ")
				oneLine(t, err)
				is.True(len(err.Error()) < 400) // a long value is clipped
				_, served := logLine(logs.String(), "serving")
				is.True(!served) // never serving
			})
		}
	}
	is := is.New(t)
	_, _, err := runOp(env("NATS_URL", s.ClientURL(), "BROKER_SESSION_HEADER", "Session Id"))
	is.True(err != nil) // the environment variable is refused the same way
	is.Equal(err.Error(), `session-header (BROKER_SESSION_HEADER) "Session Id": byte 8 (' ') is not allowed in a header name: use only letters, digits and !#$%&'*+-.^_`+"`"+`|~, as gecholog's session_id_header (such as Session-Id)`)
}

// BROKER_SESSION_HEADER reaches the replica: a session pool keys its
// calls by that header, and not by Session-Id.
func TestServeKeysSessionsByTheSessionHeaderItIsGiven(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	pools := writeFile(t, "pools.json", []byte(`{"pools":[{"ingress":"/azure/","affinity":"session","routers":[{"path":"/azure/a/"},{"path":"/azure/b/"},{"path":"/azure/c/"}]}]}`))
	startProgram(t, env("NATS_URL", s.ClientURL(), "BROKER_POOLS", pools, "BROKER_SESSION_HEADER", "X-Gl-Session"))
	nc := natstest.Connect(t, s)
	awaitAnswer(t, nc, "/azure/")
	calls := 0
	for session := range 20 {
		var first string
		for tr := range 5 {
			calls++
			// Session-Id names a new session each call: read, it would spread them.
			msg := fmt.Appendf(nil, `{"gl_path":"/azure/","ingress_headers":{"Session-Id":["BBB00002_%d_1_0"],"X-Gl-Session":["AAA00001_%d_1_%d"]}}`,
				calls, 1696681410696216000+session, tr)
			m, err := nc.Request("coburn.gl.broker", msg, 2*time.Second)
			is.NoErr(err)
			var r struct {
				GLPath string `json:"gl_path"`
			}
			is.NoErr(json.Unmarshal(m.Data, &r))
			if tr == 0 {
				first = r.GLPath
			}
			is.Equal(r.GLPath, first) // every call of the session on one router
			// Reported, as gecholog's response processor does, so that no
			// router is held at its bound by calls in flight.
			_, err = nc.Request("coburn.gl.broker", fmt.Appendf(nil, `{"gl_path":%q,"egress_status_code":200}`, r.GLPath), 2*time.Second)
			is.NoErr(err)
		}
	}
}
