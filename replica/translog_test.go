package replica_test

// gecholog's transaction log, as every replica hears it: a stand-in
// publishes each finished call on the logger subject the way gecholog does
// (standin.Transaction), whole, with its prompt and completion.

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/standin"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/replica"
)

// viewOf is router as replica b sees it now.
func viewOf(b *broker.Broker, router string) broker.RouterView {
	for _, v := range b.View(time.Now()) {
		if v.Router == router {
			return v
		}
	}
	return broker.RouterView{}
}

// finish publishes f on gecholog's logger subject, as gecholog does once
// the call is over.
func finish(t *testing.T, nc *nats.Conn, f standin.Finished) {
	t.Helper()
	if err := nc.Publish(replica.DefaultLoggerSubject, standin.Transaction(f)); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

// poolOf is a pool of routers /azure/<name>/ of weight 1 choosing by
// strategy; a router named "name@1" is on tier 1.
func poolOf(strategy string, names ...string) broker.Pool {
	p := broker.Pool{Ingress: "/azure/", Strategy: strategy}
	for _, n := range names {
		name, tier, _ := strings.Cut(n, "@")
		r := broker.Router{Path: "/azure/" + name + "/", Weight: 1}
		if tier == "1" {
			r.Priority = 1
		}
		p.Routers = append(p.Routers, r)
	}
	return p
}

func TestATransactionOnTheLoggerSubjectReachesEveryReplicasView(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	rs := runReplicas(t, replica.Config{NATS: natsconn.Settings{Servers: s.ClientURL()},
		Pools: []broker.Pool{poolOf("latency", "gpt4", "claude", "gpt35turbo")}, Policy: broker.Policy{DisabledTime: time.Minute}}, 3)
	nc := natstest.Connect(t, s)
	// Whole transactions, with a prompt and a completion of 400 kB each.
	finish(t, nc, standin.Finished{Ingress: "/azure/", Router: "/azure/gpt4/", Latency: 123456789, Payload: 400 << 10,
		Headers: map[string]string{"x-ratelimit-remaining-requests": "25", "x-ratelimit-limit-requests": "100", "x-ratelimit-reset-requests": "1m0s"}})
	finish(t, nc, standin.Finished{Ingress: "/azure/", Router: "/azure/claude/", Latency: 987654321, Payload: 400 << 10,
		Headers: map[string]string{"anthropic-ratelimit-tokens-remaining": "300", "anthropic-ratelimit-tokens-limit": "1000",
			"anthropic-ratelimit-tokens-reset": time.Now().Add(time.Minute).UTC().Format(time.RFC3339)}})

	rs.every(t, 5*time.Second, func(b *broker.Broker) bool {
		return viewOf(b, "/azure/gpt4/").LatencyKnown && viewOf(b, "/azure/claude/").LatencyKnown
	}, "both heard of")
	for _, b := range rs.replicas {
		gpt4, claude, other := viewOf(b, "/azure/gpt4/"), viewOf(b, "/azure/claude/"), viewOf(b, "/azure/gpt35turbo/")
		is.Equal(gpt4.Latency, 123456789*time.Nanosecond) // the upstream's time to the nanosecond, on every replica
		is.Equal(claude.Latency, 987654321*time.Nanosecond)
		is.True(gpt4.HeadroomKnown && claude.HeadroomKnown)  // both sent rate-limit headers
		is.Equal(gpt4.Headroom, 0.25)                        // 25 of 100 requests left (OpenAI)
		is.Equal(claude.Headroom, 0.3)                       // 300 of 1000 tokens left (Anthropic)
		is.True(!other.LatencyKnown && !other.HeadroomKnown) // a router not heard of is not known
		is.True(!b.Heard().IsZero())                         // the log was heard
	}
	// Each transaction was read whole by one replica, in their queue
	// group, and told to the others as a digest.
	read := uint64(0)
	for i, r := range rs.fleet.Replicas {
		natstest.Eventually(t, 5*time.Second, func() bool { c := r.Transactions(); return c.Read+c.Shared == 2 }, "replica-%d heard both", i+1)
		c := r.Transactions()
		read += c.Read
		c.Read, c.Shared = 0, 0
		is.Equal(c, replica.TransactionCounts{}) // nothing else: none dropped, unreadable or out of bounds
	}
	is.Equal(read, uint64(2)) // each read once in the fleet, not once a replica
	natstest.Eventually(t, 5*time.Second, func() bool {
		for _, l := range rs.logs {
			if _, ok := logLine(l.String(), "hearing gecholog's transaction log"); !ok {
				return false
			}
		}
		return true
	}, "each replica says it hears the log")
}

func TestLatencyPrefersTheFastestRouterOnceHeardAndStillExplores(t *testing.T) {
	is := is.New(t)
	rs, nc, count := choosing(t, poolOf("latency", "fast", "mid", "slow"))
	heard := func(router string, latency time.Duration) {
		finish(t, nc, standin.Finished{Ingress: "/azure/", Router: router, Latency: latency, Payload: 1 << 10})
	}
	heard("/azure/fast/", 50*time.Millisecond)
	heard("/azure/mid/", 100*time.Millisecond)
	heard("/azure/slow/", 400*time.Millisecond)
	rs.every(t, 5*time.Second, func(b *broker.Broker) bool {
		return viewOf(b, "/azure/fast/").LatencyKnown && viewOf(b, "/azure/mid/").LatencyKnown && viewOf(b, "/azure/slow/").LatencyKnown
	}, "every router heard of")

	// 95% of calls to the fastest, 5% at random: about 97% in all, and
	// each of the others about 1.7% (10 of 600; none at all by chance:
	// 1 in 20,000).
	got := count(600)
	is.True(got["/azure/fast/"] >= 540) // the fastest takes the calls
	is.True(got["/azure/mid/"] >= 1)    // the others are still explored
	is.True(got["/azure/slow/"] >= 1)   // both of them

	// The fastest turns slow: heard of, its calls go to the next fastest.
	for range 10 {
		heard("/azure/fast/", 2*time.Second)
	}
	rs.every(t, 5*time.Second, func(b *broker.Broker) bool {
		return viewOf(b, "/azure/fast/").Latency > viewOf(b, "/azure/slow/").Latency
	}, "fast is now the slowest")
	got = count(600)
	is.True(got["/azure/mid/"] >= 540) // the next fastest takes the calls
	is.True(got["/azure/fast/"] >= 1)  // the slow one is still explored
}

func TestHeadroomSendsNoCallToARouterWithNoneLeftUntilItsResetAndSpillsToTheNextTier(t *testing.T) {
	is := is.New(t)
	rs, nc, count := choosing(t, poolOf("headroom", "openai", "anthropic", "backup@1"))
	// Without rate-limit headers, tier 0 shares the calls.
	got := count(40)
	is.Equal(got["/azure/backup/"], 0)
	is.True(got["/azure/openai/"] > 0 && got["/azure/anthropic/"] > 0) // both of tier 0 take calls

	// OpenAI's last answer says no request is left for 3 s: a 429. Its
	// reset is a time of the wall clock (the answer's, from gecholog's
	// log, plus 3 s), and the broker compares it with the wall clock; so
	// does this test (Round(0) drops the monotonic reading). The two
	// clocks part when the machine's clock is stepped, as a VM's is.
	start := time.Now()
	reset := start.Round(0).Add(3 * time.Second)
	finish(t, nc, standin.Finished{Ingress: "/azure/", Router: "/azure/openai/", Status: 429, Start: time.Now(), Payload: 1 << 10,
		Headers: map[string]string{"X-Ratelimit-Remaining-Requests": "0", "X-Ratelimit-Limit-Requests": "60", "X-Ratelimit-Reset-Requests": "3s"}})
	rs.every(t, 5*time.Second, func(b *broker.Broker) bool {
		v := viewOf(b, "/azure/openai/")
		return v.HeadroomKnown && v.Headroom == 0
	}, "openai has none left")
	is.Equal(count(40), map[string]int{"/azure/anthropic/": 40}) // none to openai

	// Anthropic's says no token is left either: the whole tier is out, and
	// tier 1 takes the calls.
	finish(t, nc, standin.Finished{Ingress: "/azure/", Router: "/azure/anthropic/", Start: time.Now(), Payload: 1 << 10,
		Headers: map[string]string{"anthropic-ratelimit-tokens-remaining": "0", "anthropic-ratelimit-tokens-limit": "40000",
			"anthropic-ratelimit-tokens-reset": reset.Add(time.Minute).UTC().Format(time.RFC3339Nano)}})
	rs.every(t, 5*time.Second, func(b *broker.Broker) bool {
		v := viewOf(b, "/azure/anthropic/")
		return v.HeadroomKnown && v.Headroom == 0
	}, "anthropic has none left")
	is.Equal(count(20), map[string]int{"/azure/backup/": 20}) // spilled to the next tier

	// OpenAI's reset comes: it takes calls again, and not before.
	var back time.Time
	natstest.Eventually(t, 10*time.Second, func() bool {
		if ask(t, nc, "/azure/") == "/azure/openai/" {
			back = time.Now().Round(0)
		}
		return !back.IsZero()
	}, "calls back to openai after its reset")
	if back.Before(reset) {
		// Failed once in about 20 runs of the whole suite when it
		// compared the monotonic clock with the broker's wall clock: say
		// what each replica saw, and how far the clocks parted.
		t.Logf("wall clock moved %v more than the monotonic one since the 429", time.Now().Round(0).Sub(start.Round(0))-time.Since(start))
		for i, b := range rs.replicas {
			t.Logf("replica-%d, openai chosen %v before its reset: openai %+v; anthropic %+v; backup %+v; calls %v", i+1, reset.Sub(back),
				viewOf(b, "/azure/openai/"), viewOf(b, "/azure/anthropic/"), viewOf(b, "/azure/backup/"), b.Stats().Calls)
		}
	}
	is.True(!back.Before(reset))                              // not before its reset
	is.Equal(count(20), map[string]int{"/azure/openai/": 20}) // on every replica, from the reset on
}

func TestASilentTransactionLogIsSaidOnceEachTimeItFallsSilent(t *testing.T) {
	is := is.New(t)
	const silence = 400 * time.Millisecond
	s := natstest.Start(t)
	rs := runReplicas(t, replica.Config{NATS: natsconn.Settings{Servers: s.ClientURL()},
		Pools:  []broker.Pool{poolOf("latency", "a", "b"), {Ingress: "/other/", Routers: []broker.Router{{Path: "/other/x/", Weight: 1}}}},
		Policy: broker.Policy{DisabledTime: time.Minute}, LoggerSilence: silence}, 2)
	nc := natstest.Connect(t, s)
	const silent = "gecholog's transaction log is silent: the pools that choose by it choose without it until it is heard"
	said := func(msg string) func() bool {
		return func() bool {
			for _, l := range rs.logs {
				if !strings.Contains(l.String(), msg) {
					return false
				}
			}
			return true
		}
	}
	lines := func(msg string) (n []int) {
		for _, l := range rs.logs {
			n = append(n, countLines(l.String(), msg, time.Time{}, time.Now().Add(time.Hour)))
		}
		return n
	}
	// calling asks for calls until cond, or for calls over d when cond is
	// nil: the replicas choose for the pool all the while.
	calling := func(d time.Duration, cond func() bool, what string) {
		t.Helper()
		if cond == nil {
			until := time.Now().Add(d)
			cond = func() bool { return time.Now().After(until) }
		}
		natstest.Eventually(t, d+10*time.Second, func() bool {
			ask(t, nc, "/azure/")
			return cond()
		}, "%s", what)
	}

	calling(0, said(silent), "the silence said by every replica")
	line, _ := logLine(rs.logs[0].String(), silent)
	is.Equal(line["level"], "WARN")
	is.Equal(line["strategy"], "latency")                                     // names the strategy
	is.Equal(line["pools"], "/azure/")                                        // and the pool, not /other/
	is.Equal(line["subject"], "coburn.gl.logger")                             // and the subject
	is.True(strings.Contains(line["hint"].(string), "topic_exact_logger"))    // how to fix it in gecholog
	is.True(strings.Contains(line["hint"].(string), "BROKER_LOGGER_SUBJECT")) // or in the broker
	is.True(strings.Contains(line["hint"].(string), "subscribe"))             // and the permission it needs
	calling(3*silence, nil, "three more silences of calls")
	is.Equal(lines(silent), []int{1, 1}) // once

	// Heard: said, and the next silence is said once more.
	finish(t, nc, standin.Finished{Ingress: "/azure/", Router: "/azure/a/", Latency: time.Millisecond})
	natstest.Eventually(t, 5*time.Second, said("hearing gecholog's transaction log"), "the log heard by every replica")
	calling(0, func() bool { return slices.Equal(lines(silent), []int{2, 2}) }, "the second silence said by every replica")
	calling(3*silence, nil, "three more silences of calls")
	is.Equal(lines(silent), []int{2, 2}) // once more, and no more
}

func TestTransactionsTooLargeOrUnreadableAreCountedAndIgnored(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t, func(o *server.Options) { o.MaxPayload = 16 << 20 })
	rs := runReplicas(t, replica.Config{NATS: natsconn.Settings{Servers: s.ClientURL()},
		Pools: []broker.Pool{poolOf("latency", "a", "b")}, Policy: broker.Policy{DisabledTime: time.Minute}}, 1)
	nc := natstest.Connect(t, s)
	huge := standin.Transaction(standin.Finished{Ingress: "/azure/", Router: "/azure/a/", Latency: time.Millisecond, Payload: 5 << 20})
	for _, data := range [][]byte{huge, []byte(`{"response":{"gl_path":"/azure/a/"`), []byte(`{"response":{}}`)} {
		is.NoErr(nc.Publish(replica.DefaultLoggerSubject, data))
	}
	finish(t, nc, standin.Finished{Ingress: "/azure/", Router: "/azure/b/", Latency: time.Millisecond})
	r := rs.fleet.Replicas[0]
	natstest.Eventually(t, 5*time.Second, func() bool { return r.Transactions().Read == 1 }, "the good one read")
	is.Equal(r.Transactions(), replica.TransactionCounts{Read: 1, TooLarge: 1, Unreadable: 2})
	is.True(!viewOf(rs.replicas[0], "/azure/a/").LatencyKnown) // nothing of the ignored ones reached the view
	is.True(viewOf(rs.replicas[0], "/azure/b/").LatencyKnown)  // the good one did
	line, ok := logLine(rs.logs[0].String(), "ignoring a transaction from gecholog's log that cannot be read")
	is.True(ok)                                                                                 // said
	says(t, "the line's error", fmt.Sprint(line["error"]), "8 MiB")                             // why
	is.Equal(countLines(rs.logs[0].String(), line["msg"].(string), time.Time{}, time.Now()), 1) // once in 10 s
}

// A transaction whose upstream timer stops in the year 9999 is no latency
// sample: after five real samples of 10 ms the router averages 10 ms on
// every replica, not 95 years, and the latency pool still chooses it.
func TestALatencyBeyondTheInFlightBoundIsNoSample(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	rs := runReplicas(t, replica.Config{NATS: natsconn.Settings{Servers: s.ClientURL()},
		Pools: []broker.Pool{poolOf("latency", "a", "b")}, Policy: broker.Policy{DisabledTime: time.Minute}}, 2)
	nc := natstest.Connect(t, s)
	for range 5 {
		finish(t, nc, standin.Finished{Ingress: "/azure/", Router: "/azure/a/", Latency: 10 * time.Millisecond})
	}
	finish(t, nc, standin.Finished{Ingress: "/azure/", Router: "/azure/b/", Latency: 20 * time.Millisecond})
	start := time.Now().UTC().Format(time.RFC3339Nano)
	is.NoErr(nc.Publish(replica.DefaultLoggerSubject, []byte(`{"response":{"gl_path":"/azure/a/","egress_status_code":200,`+
		`"outbound_inbound_timer":{"start":"`+start+`","stop":"9999-12-31T23:59:59Z","duration":1}}}`)))
	for i, r := range rs.fleet.Replicas {
		natstest.Eventually(t, 5*time.Second, func() bool { c := r.Transactions(); return c.Read+c.Shared == 7 }, "replica-%d heard all", i+1)
		is.Equal(r.Transactions().OutOfBounds, uint64(1))                          // the forged one, counted
		is.Equal(viewOf(rs.replicas[i], "/azure/a/").Latency, 10*time.Millisecond) // the real samples' average
	}
	got := map[string]int{}
	for range 100 {
		got[ask(t, nc, "/azure/")]++
	}
	is.True(got["/azure/a/"] >= 80) // the fastest still takes the calls
}
