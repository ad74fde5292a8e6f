package main

import (
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/internal/standin"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/replica"
)

// explainPools is a pool that chooses by headroom, with a fourth router
// in tier 0 and a backup in tier 1.
const explainPools = `{"pools":[{"ingress":"/azure/","strategy":"headroom","routers":[
	{"path":"/azure/gpt4/"},{"path":"/azure/dud/"},{"path":"/azure/gpt35turbo/","price":{"input":0.5,"output":1.5}},{"path":"/azure/gpt4o/"},
	{"path":"/azure/backup/","weight":5,"priority":1}]}]}`

// explainJSON runs `broker explain INGRESS --json` and decodes what it
// printed.
func explainJSON(t *testing.T, getenv func(string) string, ingress string) (replica.Explained, error) {
	t.Helper()
	out, _, err := runOp(getenv, "explain", ingress, "--json")
	if err != nil {
		return replica.Explained{}, err
	}
	var x replica.Explained
	if err := json.Unmarshal([]byte(out), &x); err != nil {
		t.Fatalf("explain --json printed %q: %v", out, err)
	}
	return x, nil
}

func explainedRouter(x replica.Explained, router string) replica.ExplainedRouter {
	for _, r := range x.Routers {
		if r.Router == router {
			return r
		}
	}
	return replica.ExplainedRouter{}
}

// The operator's question, answered by a running replica: one router
// disabled by hand in the bucket, one taken out by a 429 whose upstream
// asked for 30 s and said no request is left, one with a quarter of its
// rate limit left, one whose upstream says nothing, and a backup tier.
func TestExplainSaysWhyEachRouterGetsItsShareFromARunningReplica(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	pools := writeFile(t, "pools.json", []byte(explainPools))
	r := startMetricsReplica(t, s.ClientURL(), "BROKER_POOLS", pools, "BROKER_ID", "replica-1", "DISABLED_TIME", "0.25")
	waitReady(t, r)
	ops := env("NATS_URL", s.ClientURL(), "BROKER_METRICS_ADDR", r.addr)

	_, errs, err := runOp(ops, "disable", "/azure/gpt4/", "--reason", "quota review", "--by", "alice")
	is.NoErr(err) // disabled by hand, in the bucket
	is.Equal(errs, "")
	nc := natstest.Connect(t, s)
	// The dud answered 429 with Retry-After: 30, as gecholog's response
	// context tells it, and its transaction says no request is left.
	_, err = nc.Request("coburn.gl.broker", []byte(`{"gl_path":"/azure/dud/","egress_status_code":429,"inbound_headers":{"Retry-After":["30"]}}`), 2*time.Second)
	is.NoErr(err)
	is.NoErr(nc.Publish("coburn.gl.logger", standin.Transaction(standin.Finished{Ingress: "/azure/", Router: "/azure/dud/", Status: 429,
		Latency: 5 * time.Millisecond, Headers: map[string]string{"x-ratelimit-remaining-requests": "0", "x-ratelimit-limit-requests": "120", "x-ratelimit-reset-requests": "30s"}})))
	// gpt35turbo has 30 of its 120 requests left, and its call used 1,000
	// tokens in and 1,000 out.
	is.NoErr(nc.Publish("coburn.gl.logger", standin.Transaction(standin.Finished{Ingress: "/azure/", Router: "/azure/gpt35turbo/", Payload: 4000,
		Latency: 40 * time.Millisecond, Headers: map[string]string{"x-ratelimit-remaining-requests": "30", "x-ratelimit-limit-requests": "120"}})))

	var x replica.Explained
	var failed string // why explain failed, if it did
	natstest.Eventually(t, 10*time.Second, func() bool {
		x, err = explainJSON(t, ops, "/azure/")
		if err != nil {
			failed = err.Error()
		}
		h := explainedRouter(x, "/azure/gpt35turbo/").Headroom
		return err == nil && explainedRouter(x, "/azure/gpt4/").State == "manual" && explainedRouter(x, "/azure/dud/").State == "disabled" &&
			explainedRouter(x, "/azure/dud/").RateLimitedUntil != nil && h != nil && *h == 0.25 &&
			explainedRouter(x, "/azure/gpt35turbo/").Tokens.Input != 0 // its usage is heard after its headroom
	}, "the replica hears the disable, the 429 and both transactions; explain says %+v %s", &x, &failed)

	is.Equal(x.Replica, "replica-1")
	var page struct {
		Config struct{ Revision uint64 } `json:"config"`
	}
	_, body, err := r.get("/status.json")
	is.NoErr(err)
	is.NoErr(json.Unmarshal([]byte(body), &page))
	is.True(x.Config != nil)                          // the configuration it runs by
	is.Equal(x.Config.Revision, page.Config.Revision) // as its status page says
	is.Equal(x.Strategy, "headroom")
	is.Equal(x.Rule, "strategy")
	is.True(x.Tier != nil && *x.Tier == 0) // the tier in use
	says(t, "the pool's why", x.Why, "tier 0 takes the calls, chosen by the headroom strategy")

	gpt4 := explainedRouter(x, "/azure/gpt4/")
	says(t, "gpt4's why", gpt4.Why, "disabled by hand by alice until enabled by hand: quota review")
	is.Equal(*gpt4.Share, 0.0) // no calls

	dud := explainedRouter(x, "/azure/dud/")
	says(t, "the dud's why", dud.Why, "by replica-1: egress_status_code 429, Retry-After 30s; its upstream also said no request or token is left until ")
	is.True(dud.Until != nil && time.Until(*dud.Until) > 15*time.Second) // the Retry-After, not the 15 s disable
	is.Equal(*dud.Share, 0.0)

	gpt35 := explainedRouter(x, "/azure/gpt35turbo/")
	is.Equal(gpt35.State, "enabled")
	is.Equal(gpt35.Reads, "headroom 25%, weight 1") // what the strategy reads
	is.True(math.Abs(*gpt35.Share-0.2) < 1e-9)      // a quarter against gpt4o's whole: a fifth
	is.Equal(*gpt35.LatencyMS, 40.0)
	gpt4o := explainedRouter(x, "/azure/gpt4o/")
	is.True(math.Abs(*gpt4o.Share-0.8) < 1e-9) // four fifths

	backup := explainedRouter(x, "/azure/backup/")
	is.Equal(backup.State, "standby")
	says(t, "the backup's why", backup.Why, "tier 1 takes calls only when tier 0 cannot")

	var total float64
	for _, r := range x.Routers {
		total += *r.Share
	}
	is.True(math.Abs(total-1) < 1e-9) // the shares add up to 100%

	// The table says the same in lines a person reads.
	out, _, err := runOp(ops, "explain", "/azure/")
	is.NoErr(err)
	t.Logf("broker explain /azure/:\n%s", out)
	saysFirst(t, "explain", out, "/azure/ on replica replica-1, ")
	says(t, "explain", out, "; strategy headroom, all-disabled panic\n")
	says(t, "explain", out, "Tier 0 takes the calls, chosen by the headroom strategy: it is the best tier, and has an enabled router\n")
	row := func(router string) []string { return strings.Fields(explainRow(out, router)) }
	is.Equal(row("/azure/gpt4/")[3:6], []string{"manual", "0%", "0"})           // state, share, in flight
	is.Equal(row("/azure/dud/")[3:6], []string{"disabled", "0%", "0"})          // nothing to it
	is.Equal(row("/azure/gpt35turbo/")[3:5], []string{"enabled", "20%"})        // its share
	is.Equal(row("/azure/gpt4o/")[3:5], []string{"enabled", "80%"})             // the rest
	is.Equal(row("/azure/backup/")[3:5], []string{"standby", "0%"})             // the next tier waits
	says(t, "gpt35turbo's row", explainRow(out, "/azure/gpt35turbo/"), "25%")   // its headroom
	is.Equal(row("/azure/gpt35turbo/")[8:10], []string{"1.0k/1.0k/0", "0.002"}) // its tokens in, out and cached, and its spend
	g := explainedRouter(x, "/azure/gpt35turbo/")
	is.Equal(g.Tokens, replica.ExplainedTokens{Input: 1000, Output: 1000}) // its tokens
	is.True(g.Spend != nil && math.Abs(*g.Spend-0.002) < 1e-12)            // 1,000 × 0.5 + 1,000 × 1.5 per million
	is.Equal(explainedRouter(x, "/azure/gpt4o/").Spend, nil)               // no price, no spend
}

// explainRow finds the explain table's line for router.
func explainRow(out, router string) string {
	for line := range strings.Lines(out) {
		if strings.HasPrefix(line, router+" ") {
			return line
		}
	}
	return ""
}

func TestExplainAnswersBadInputWithOneLine(t *testing.T) {
	s := natstest.Start(t)
	r := startMetricsReplica(t, s.ClientURL())
	waitReady(t, r)
	ops := env("BROKER_METRICS_ADDR", r.addr)
	for _, tc := range []struct {
		name   string
		getenv func(string) string
		args   []string
		want   string
	}{
		{"an unknown ingress lists the pools", ops, []string{"/openai/"}, "no pool has ingress /openai/; the pools are /azure/"},
		{"no ingress", ops, nil, "explain: give the pool's INGRESS, e.g. broker explain /azure/"},
		{"two ingresses", ops, []string{"/azure/", "/b/"}, "explain: one INGRESS at a time"},
		{"no listener setting", env(), []string{"/azure/"}, "metrics-addr: not set; explain asks a replica's listener, which serves only when BROKER_METRICS_ADDR is set"},
		{"odd characters", ops, []string{"/azure/\x1b[2J\u202e/"}, `ingress "/azure/\u001b[2J\u202e/": a pool's ingress is a router path`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := runOp(tc.getenv, append([]string{"explain"}, tc.args...)...)
			if err == nil {
				t.Fatalf("explain %q: no error", tc.args)
			}
			saysFirst(t, "the error", err.Error(), tc.want)
			oneLine(t, err)
			neverSays(t, "the error", err.Error(), "\x1b")
		})
	}
}

// What answers on BROKER_METRICS_ADDR may be anything: explain says so in
// one line, reads at most 1 MB, waits at most 5 s, and shows no control
// character it was sent.
func TestExplainTrustsNothingTheListenerSends(t *testing.T) {
	t.Parallel()
	serve := func(t *testing.T, h http.HandlerFunc) string {
		srv := httptest.NewServer(h)
		t.Cleanup(srv.Close)
		return strings.TrimPrefix(srv.URL, "http://")
	}
	huge := serve(t, func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte(`{"why":"`))
		for range 3 << 10 {
			w.Write([]byte(strings.Repeat("x", 1<<10)))
		}
		w.Write([]byte(`"}`))
	})
	garbage := serve(t, func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("<html>\x1b[2J not json")) })
	hostile := serve(t, func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, `{"replica":"r\u001b[2J","ingress":"/azure/","why":"tier 0\u009b\u202e","config":{"revision":1},
			"routers":[{"router":"/azure/x/","state":"enabled\u001b]0;pwned\u0007","why":"ok","share":7,"in_flight":-3,"tokens":{"input":-5},"spend":-2}]}`)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0") // accepts, and never answers
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nothing := closed.Addr().String()
	closed.Close()

	for _, tc := range []struct{ name, addr, want string }{
		{"huge", huge, "the answer is larger than 1048576 bytes"},
		{"not JSON", garbage, "answered 200 OK, not an explanation"},
		{"silent", ln.Addr().String(), "no answer within 5s"},
		{"nothing listening", nothing, "connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := runOp(env("BROKER_METRICS_ADDR", tc.addr), "explain", "/azure/")
			if err == nil {
				t.Fatal("no error")
			}
			says(t, "the error", err.Error(), tc.want)
			oneLine(t, err)
			neverSays(t, "the error", err.Error(), "\x1b")
		})
	}
	t.Run("hostile", func(t *testing.T) {
		is := is.New(t)
		for _, args := range [][]string{{"explain", "/azure/"}, {"explain", "/azure/", "--json"}} {
			out, _, err := runOp(env("BROKER_METRICS_ADDR", hostile), args...)
			is.NoErr(err)
			for _, c := range []string{"\x1b", "\u009b", "\u202e", "\a"} {
				neverSays(t, "explain "+strings.Join(args[1:], " "), out, c)
			}
			if len(args) == 3 {
				var x replica.Explained
				is.NoErr(json.Unmarshal([]byte(out), &x))
				is.Equal(*x.Routers[0].Share, 1.0)        // a share is at most 1
				is.Equal(x.Routers[0].InFlight, int64(0)) // and a count never negative
				is.Equal(x.Routers[0].Tokens.Input, int64(0))
				is.Equal(*x.Routers[0].Spend, 0.0) // nor a spend
			} else {
				says(t, "explain", out, `r\u001b[2J`) // shown escaped
			}
		}
	})
}
