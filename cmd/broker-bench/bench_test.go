package main

// The bench run in miniature: each mode with tiny durations and
// counts, to prove the program works end to end. These tests make no
// timing assertions; the figures are for people, on a quiet machine.

import (
	"bytes"
	"context"
	"io"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
	"go.uber.org/goleak"

	"github.com/gecholog/broker/internal/testutil/natstest"
)

// TestMain fails the package when a goroutine the bench started, or a
// server or connection it opened, outlives the run.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, natstest.LeakOptions()...)
}

// noEnv is an environment with nothing set: the bench reads only what its
// arguments say, whatever the machine running the tests has exported.
func noEnv(string) string { return "" }

func runBench(t *testing.T, args ...string) string {
	t.Helper()
	is := is.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out, errs bytes.Buffer
	err := run(ctx, args, noEnv, &out, &errs)
	is.NoErr(err) // the bench ran
	t.Log(out.String())
	return out.String()
}

func TestBenchModesPrintTheirReports(t *testing.T) {
	cases := []struct {
		mode string
		args []string
		want []string
	}{
		{"throughput", []string{"-duration", "300ms", "-warmup", "50ms", "-rounds", "2", "-callers", "4", "-conns", "2"},
			[]string{"strategy random", "no-op responder (3)", "broker (3 replicas)", "requests/s", "p99.9", "round by round", "broker / no-op: throughput"}},
		{"propagation", []string{"-trials", "20"},
			[]string{"last replica drops it (from sending the report)", "p99", "trials 20, not propagated within 5s 0", "KV writes"}},
		{"storm", []string{"-duration", "300ms", "-warmup", "50ms", "-callers", "4", "-reports", "1000", "-rounds", "2"},
			[]string{"baseline", "during the storm", "each storm run against the baselines", "failure reports sent", "writes per disable event", "drop"}},
		{"scale", []string{"-pools", "5", "-routers", "50", "-starts", "2"},
			[]string{"5 pools, 50 routers", "start to ready", "choice in a pool of 10", "replica ready", "the replica's share"}},
		{"soak", []string{"-duration", "500ms", "-rate", "200", "-timeout", "2s"},
			[]string{"200 gecholog calls per second", "request context", "response context", "start", "end", "broker errors"}},
		{"nodeloss", []string{"-runs", "1", "-nodeloss-disabled-time", "3s"},
			[]string{"3 nats-server", "meta leader", "stream leader", "neither leader", "agree max", "answer max", "agreement ≤ 1s in every run, answering again ≤ 100ms: ",
				"no disable lost (every report agreed on and landed): met"}},
		// The cluster in the bench's process, the replicas as processes.
		{"partition", []string{"-partition-runs", "1", "-partition-time", "2s", "-partition-settings", "defaults"},
			[]string{"3 embedded in the bench", "3 replica processes of the broker binary", "defaults: the servers' defaults",
				"a follower, routes ", "the stream leader, routes ", "a follower, routes+replica", "the stream leader, routes+replica",
				"others moved", "lost majority", "the cut side's report", "writes lost", "idle routes: ", "PINGs/s, over ", " route connections"}},
		{"strategies", []string{"-duration", "400ms", "-warmup", "50ms", "-rounds", "2", "-callers", "4", "-conns", "2"},
			[]string{"no-op responder (3)", "random (3 replicas)", "least-busy (3 replicas)", "latency (3 replicas)", "headroom (3 replicas)", "cost (3 replicas)", "sessions (3 replicas)",
				"500 transactions/s", "headroom / no-op: throughput", "random's", "(target ≥ 0.95: "}},
		{"spillover", []string{"-duration", "2s", "-window", "1s", "-quota", "10"},
			[]string{"Time is compressed: the quota is 10 calls per 1s", "/tiered/ (tiers)", "/flat/ (random)",
				"tiers: tier 0 carries", "(target ≥ 90%: ", "in one Retry-After window", "(target ≤ 1: "}},
		{"headroom", []string{"-duration", "2s", "-window", "1s", "-quota", "5"},
			[]string{"Time is compressed: the quota is 5 calls per 1s", "/headroom/ (headroom)", "/random/ (random)", "headroom: ", "client-visible 429s", "(target ≤ 1%"}},
		{"latency", []string{"-duration", "1s", "-load", "20"},
			[]string{"50, 100 and 400 ms", "/latency/ (latency)", "/random/ (random)", "mean upstream time", "(target ≤ 1.25: ", "(target ≥ 1%: "}},
		{"cost", []string{"-duration", "1s", "-load", "20"},
			[]string{"priced per million tokens", "/cost/ (cost)", "/random/ (random)", "replica-1 explains /cost/: tier 0 takes the calls, chosen by the cost strategy", "each router priced at the pool's average call of",
				"cost: spend per call", "× random's on the same traffic", "of its calls on the cheapest router, a (random: "}},
		{"budget", []string{"-duration", "1s", "-load", "40", "-in-process"},
			[]string{"on tier 0 with a budget of 21000 tokens a minute", "/budget/payg/ on tier 1", "the PTU used", "overshoot", "(target ≤ 2%: ",
				"a counter in each replica's memory", "restart: every replica stopped and 3 started anew",
				"replica 3 counts", "exactly what the answers said: 0 lost, 0 counted twice", "(target: exactly, in every period: met)"}},
		{"balance", []string{"-duration", "1s", "-load", "50"},
			[]string{"Every 10 ms", "/leastbusy/ (least-busy)", "/random/ (random)", "least-busy: balanced within 2 calls", "of the weighted fair share in", "samples (target: all: "}},
		{"views", []string{"-trials", "5"},
			[]string{"5 trials", "every replica's view shows", "a call chosen", "its report", "a transaction", "not shown by every replica within 5s 0",
				"views agree within", "(target ≤ 100ms: "}},
		{"drift", []string{"-calls", "300", "-callers", "4", "-inflight-bound", "1s"},
			[]string{"in-flight bound 1s", "Time is compressed: the in-flight bound is 1s", "/leastbusy/ (least-busy)", "/random/ (random)",
				"least-busy drift: after 300 calls", "back to 0", "(target ≤ the bound, 1s: "}},
		// Replica processes of the broker binary, built by the bench. The
		// counts of wrong answers hold on any machine; the times do not.
		{"affinity", []string{"-sessions", "20", "-session-calls", "3", "-callers", "4", "-conns", "2"},
			[]string{"3 replica processes of the broker binary", "All healthy: /aff/, 20 sessions × 3 calls", "first call (no Session-Id)",
				"later keyed calls (3rd on)", "(target ≥ 99%: ", "share / weight", "/aff/a/            2        50.0%",
				"One router disabled mid-run: /move/, 20 sessions × 3 calls, all 4 callers on it", "after call 2 of every session, /move/a/ disabled by hand",
				"calls to /move/a/ after the disable: 0 (target 0: met)", "sessions of other routers whose own router the disable changed: 0 (target 0: met)",
				"/aff/ (affinity)         60", "/rnd/ (random)           60", "affinity: cached input tokens",
				"calls 180 in ", "failed (no answer or not 200) 0 (target 0: met)"}},
		{"budget", []string{"-duration", "1s", "-load", "40"},
			[]string{"3 replica processes of the broker binary", "8 callers, each with a\nNATS connection of its own", "on tier 0 with a budget of 21000 tokens a minute",
				"the PTU used", "overshoot", "(target ≤ 2%: ", "restart: every replica stopped and 3 started anew",
				"replica 3 counts", "exactly what the answers said: 0 lost, 0 counted twice", "(target: exactly, in every period: met)"}},
		{"ptu", []string{"-ptu-runs", "1", "-ptu-calls", "60", "-quota", "10", "-window", "1s"},
			[]string{"3 replica processes of the broker binary", "the client's answer, then (async) the response context, then the transaction",
				"a quota of 10 requests per 1s", "headroom      1", "random        1", "target for headroom, every run"}},
		{"chatter", []string{"-fleets", "1,2", "-duration", "300ms", "-warmup", "200ms"},
			[]string{"Replica processes of the broker binary", "Idle (no calls):", "in msgs/s", "per replica", "idle CPU per replica with 2:",
				"(target ≤ 0.5%: ", "The transaction log, 1000 calls/s", "the log's CPU per replica:"}},
		{"reconfig", []string{"-changes", "3", "-load-changes", "2", "-duration", "400ms", "-warmup", "50ms", "-rounds", "2", "-callers", "4", "-conns", "2", "-timeout", "2s"},
			[]string{"3 replica processes of the broker binary", "last replica shows it on /metrics (seen from outside)",
				"changes 3, not applied by every replica within 5s 0, answers through the queue group not the new router 0 of 27",
				"every replica chooses by the new revision: p50", "(target p99 ≤ 100ms: ", "without changes", "with 2 changes",
				"not applied within 5s: 0", "errors with changes 0 (target 0: met)",
				"calls answered with a router after every replica applied its removal 0 (target 0: met)",
				"with / without changes: throughput", "(target ≥ 0.95: "}},
	}
	var tested []string
	for _, tc := range cases {
		tested = append(tested, tc.mode)
	}
	slices.Sort(tested)
	tested = slices.Compact(tested)                                    // budget: in-process and as processes
	is.New(t).Equal(tested, slices.Sorted(slices.Values(modeList(t)))) // every mode of the table has a case here
	// Two at a time (the default -parallel on 2 cores): the partition mode
	// alone takes most of a minute, waiting on elections, and the others
	// run beside it. Every report is checked for its lines, not its figures.
	for _, tc := range cases {
		t.Run(tc.mode, func(t *testing.T) {
			t.Parallel()
			out := runBench(t, append([]string{"-mode", tc.mode}, tc.args...)...)
			is := is.New(t)
			is.True(strings.HasPrefix(out, "broker bench -mode "+tc.mode+": nats-server ")) // the header names the server
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("report lacks %q", w)
				}
			}
		})
	}
}

// modeList is the names in the table of modes.
func modeList(t *testing.T) []string {
	t.Helper()
	var names []string
	for _, m := range modes {
		names = append(names, m.name)
	}
	return names
}

// The table of modes is the one list: -h and the error for an unknown
// mode name every mode in it.
func TestHelpAndTheUnknownModeErrorNameEveryMode(t *testing.T) {
	is := is.New(t)
	var help bytes.Buffer
	is.NoErr(run(context.Background(), []string{"-h"}, noEnv, &help, &help))
	err := run(context.Background(), []string{"-mode", "fast"}, noEnv, io.Discard, io.Discard)
	is.True(err != nil) // an unknown mode is refused
	for _, m := range modes {
		if !strings.Contains(help.String(), " "+m.name+" (") {
			t.Errorf("-h does not name mode %q and what it measures:\n%s", m.name, &help)
		}
		if !strings.Contains(err.Error(), " "+m.name) {
			t.Errorf("the error for an unknown mode does not name mode %q: %v", m.name, err)
		}
	}
}

// The PTU mode through the real gecholog gateway: run only when BROKER_GL
// names a gl binary built from github.com/direktoren/gecholog's cmd/gl
// (which needs /app/checksum writable, and listens on every address of
// the machine: see docs/performance.md), so that the usual test command
// needs nothing new.
func TestBenchPTUThroughTheRealGateway(t *testing.T) {
	gl := os.Getenv("BROKER_GL")
	if gl == "" {
		t.Skip("BROKER_GL names no gl binary")
	}
	out := runBench(t, "-mode", "ptu", "-gl", gl, "-ptu-runs", "1", "-ptu-calls", "60", "-quota", "10", "-window", "1s")
	for _, w := range []string{"behind the real gecholog gateway", "the callers are HTTP clients of its ingress paths",
		"to ingress", "gl unanswered", "headroom      1", "random        1", "target for headroom, every run"} {
		if !strings.Contains(out, w) {
			t.Errorf("report lacks %q", w)
		}
	}
}

func TestBenchRunsAgainstAServerGivenByURL(t *testing.T) {
	srv := natstest.Start(t)
	out := runBench(t, "-mode", "propagation", "-trials", "5", "-replicas", "2", "-server", srv.ClientURL())
	is.New(t).True(strings.Contains(out, "(nats://127.0.0.1:")) // the given server, not an embedded one
}

func TestBenchRefusesBadSettingsWithOneLine(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-mode", "fast"}, `mode "fast"`},
		{[]string{"-mode", "chatter", "-fleets", "3,x"}, "-fleets"},
		{[]string{"-mode", "throughput", "-strategy", "fastest"}, "-strategy"},
		{[]string{"-callers", "0"}, "-callers"},
		{[]string{"-duration", "forever"}, "-duration"},
		{[]string{"-fail", "1.5"}, "-fail"},
		{[]string{"-log-level", "loud"}, "log-level"},
		{[]string{"-mode", "spillover", "-window", "10ms"}, "-window"},
		{[]string{"-lose", "2"}, "-lose"},
		{[]string{"-mode", "affinity", "-session-calls", "2"}, "-session-calls"},
		{[]string{"-mode", "affinity", "-load-factor", "1.05"}, "-load-factor"},
		{[]string{"-pools", "10", "-routers", "5"}, "at least one router per pool"},
		{[]string{"-mode", "partition", "-partition-settings", "defaults,quick"}, "-partition-settings"},
		{[]string{"-mode", "partition", "-partition-cases", "leader,all"}, "-partition-cases"},
		{[]string{"-server", "nats://example.com:4222"}, "loopback only"},
		{[]string{"-server", "10.0.0.1:4222"}, "loopback only"},
		{[]string{"-mode", "ptu", "-gl", "/nonexistent/gl"}, "-gl"},
		{[]string{"-mode", "headroom", "-gl", "/bin/sh"}, "only -mode ptu"},
		{[]string{"extra"}, `unexpected argument "extra"`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			is := is.New(t)
			var out bytes.Buffer
			err := run(context.Background(), tc.args, noEnv, &out, &out)
			is.True(err != nil)                             // refused
			is.True(strings.Contains(err.Error(), tc.want)) // names the setting
			is.True(!strings.Contains(err.Error(), "\n"))   // in one line
			is.Equal(out.Len(), 0)                          // and nothing started
		})
	}
}
