package gecholog_test

// Benchmarks of the hot path: one processor message in, one reply out, as
// a replica's subscription handler runs it: gecholog's message parsed, the
// broker's decision, the pre-encoded reply. Run them with
//
//	go test -run '^$' -bench . -benchmem ./gecholog
//
// The targets (issue 6): at most 1 µs and 2 allocations for a request
// context and for a response context that reports a success, and a choice
// whose cost does not grow with the number of disabled routers.

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/gecholog"
)

// benchLogger logs as a production replica does: text at info, so every
// debug call on the hot path meets a real handler that says no.
func benchLogger(level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: level}))
}

// benchPools is one pool, /p/, of n routers /p/r0/ ... /p/r{n-1}/.
func benchPools(n int) []broker.Pool {
	p := broker.Pool{Ingress: "/p/"}
	for i := range n {
		p.Routers = append(p.Routers, broker.Router{Path: fmt.Sprintf("/p/r%d/", i), Weight: 1})
	}
	return []broker.Pool{p}
}

// benchHandler is the message handler of a replica in local mode (no
// store, so nothing leaves the process) serving pools, with the first
// disabled routers of the first pool disabled by failure reports.
func benchHandler(tb testing.TB, pools []broker.Pool, disabled int, level slog.Level) *gecholog.Handler {
	tb.Helper()
	log := benchLogger(level)
	b, err := broker.New(broker.Config{
		Pools:  pools,
		Policy: broker.Policy{DisabledTime: time.Hour},
		ID:     "bench",
		Logger: log,
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { b.Close(context.Background()) })
	h := gecholog.NewHandler(b, log)
	for _, r := range pools[0].Routers[:disabled] {
		h.Handle(fmt.Appendf(nil, `{"gl_path":%q,"egress_status_code":502}`, r.Path))
	}
	if got := len(b.Routers(pools[0].Ingress)); got != len(pools[0].Routers)-disabled {
		tb.Fatalf("%d routers enabled, want %d", got, len(pools[0].Routers)-disabled)
	}
	return h
}

// BenchmarkRequest is a request context for an ingress: parse, choose,
// and the pre-encoded reply. Its cost must not depend on how many of the
// pool's routers are disabled.
func BenchmarkRequest(b *testing.B) {
	for _, tc := range []struct{ routers, disabled int }{
		{3, 0}, {3, 2}, {1000, 0}, {1000, 500}, {1000, 999},
	} {
		b.Run(fmt.Sprintf("routers=%d/disabled=%d", tc.routers, tc.disabled), func(b *testing.B) {
			pools := broker.DefaultPools()
			if tc.routers != 3 {
				pools = benchPools(tc.routers)
			}
			h := benchHandler(b, pools, tc.disabled, slog.LevelInfo)
			msg := []byte(`{"gl_path":"` + pools[0].Ingress + `"}`)
			for b.Loop() {
				if len(h.Handle(msg)) == 0 {
					b.Fatal("no router chosen")
				}
			}
		})
	}
}

// strategyHandler is the message handler of a replica serving one pool,
// /p/, of three priced routers (weights 1, 1 and 2) chosen by strategy,
// with every statistic the strategies read present: each router's
// latency, rate-limit headroom and tokens heard of in the transaction
// log, calls in flight told by another replica, and calls this one chose
// and never heard the end of. It returns the request context for /p/.
func strategyHandler(tb testing.TB, strategy string) (*gecholog.Handler, []byte, *broker.Broker) {
	tb.Helper()
	var a broker.Affinity
	if strategy == broker.SessionsStrategy {
		a.Session = true // the strategy of a conversation's first call
	}
	return affinityHandler(tb, strategy, a)
}

// sessionMessage is a request context as gecholog sends it to a pool
// with affinity: the client's headers, a session id among them.
const sessionMessage = `{"gl_path":"/p/","ingress_headers":{"Accept":["application/json"],"Api-Key":["0123456789abcdef0123456789abcdef"],` +
	`"Content-Type":["application/json"],"Session-Id":["AAA00001_1696681410696216000_3_0"],"User-Agent":["OpenAI/Python 1.54.0"]}}`

// affinityHandler is strategyHandler for a pool with affinity a.
func affinityHandler(tb testing.TB, strategy string, a broker.Affinity) (*gecholog.Handler, []byte, *broker.Broker) {
	tb.Helper()
	pool := broker.Pool{Ingress: "/p/", Strategy: strategy, Affinity: a, Routers: []broker.Router{
		{Path: "/p/r0/", Weight: 1, Price: &broker.Price{Input: 2.5, CachedInput: 1.25, Output: 10}},
		{Path: "/p/r1/", Weight: 1, Price: &broker.Price{Input: 0.4, CachedInput: 0.1, Output: 1.6}},
		{Path: "/p/r2/", Weight: 2, Price: &broker.Price{Input: 0.4, CachedInput: 0.1, Output: 1.6}}}}
	log := benchLogger(slog.LevelInfo)
	b, err := broker.New(broker.Config{Pools: []broker.Pool{pool}, Policy: broker.Policy{DisabledTime: time.Hour}, ID: "bench", Logger: log})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { b.Close(context.Background()) })
	h := gecholog.NewHandler(b, log)
	now := time.Now()
	var counts []broker.Counts
	for i, r := range pool.Routers {
		b.Finished([]byte(r.Path), time.Duration(i+1)*20*time.Millisecond, &broker.RateLimits{
			// Room for every call a benchmark makes (none is answered):
			// the strategies read headroom, and never decline the tier.
			RemainingRequests: int64(1e12 * (i + 1)), LimitRequests: 1e13, ResetRequests: now.Add(time.Hour),
			RemainingTokens: -1, LimitTokens: -1})
		if err := b.Used([]byte(r.Path), broker.Usage{State: broker.UsageKnown, Input: 1200, CachedInput: 300, Output: 400}); err != nil {
			tb.Fatal(err)
		}
		counts = append(counts, broker.Counts{Router: r.Path, Chosen: int64(10 * (i + 1)), Reported: int64(4 * (i + 1))})
	}
	b.Merge("other", now, counts)
	msg := []byte(`{"gl_path":"/p/"}`)
	for range 30 {
		h.Handle(msg)
	}
	b.Refresh(now)
	for _, v := range b.View(now) {
		if v.InFlight == 0 || !v.LatencyKnown || !v.HeadroomKnown || v.CallCost == 0 {
			tb.Fatalf("%s: in flight %d, latency known %v, headroom known %v, cost per call %v: want every statistic present", v.Router, v.InFlight, v.LatencyKnown, v.HeadroomKnown, v.CallCost)
		}
	}
	return h, msg, b
}

// BenchmarkRequestStrategy is a request context for a pool of each
// strategy, with the statistics it reads present. The target (issue 10):
// at most 200 ns and no allocation for every strategy. sessions is a
// conversation's first call in a pool with "affinity": "session".
//
// The affinity cases are a request context with five client headers, a
// session id among them: the header's lookup and the session's router
// (issue 24: at most 250 ns and no allocation). session-affinity is a
// pool with "affinity": "session" whose sessions were heard on the
// transaction log (every session is, from its first call on);
// header-affinity is keyed by a header, which goes by the session's order
// alone.
func BenchmarkRequestStrategy(b *testing.B) {
	for _, s := range broker.Strategies() {
		b.Run(s, func(b *testing.B) {
			h, msg, br := strategyHandler(b, s)
			for b.Loop() {
				if len(h.Handle(msg)) == 0 {
					b.Fatal("no router chosen")
				}
			}
			if n := br.Stats().Calls[broker.Panicked]; n > 0 {
				b.Fatalf("%d calls by the all-disabled rule: not the path a call takes", n)
			}
		})
	}
	for _, tc := range []struct {
		name     string
		affinity broker.Affinity
		header   string
	}{
		{"session-affinity", broker.Affinity{Session: true}, "Session-Id"},
		{"header-affinity", broker.Affinity{Header: "X-Conversation-Id"}, "X-Conversation-Id"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			// 1,024 sessions, spread over the routers by their weights, so
			// that none is over its load bound: each call goes to its
			// session's router, as in a healthy fleet.
			h, _, br := affinityHandler(b, "", tc.affinity)
			var msgs [1024][]byte
			for i := range msgs {
				id := fmt.Sprintf("AAA00001_%d_3_0", 1696681410696216000+i)
				msg := strings.Replace(sessionMessage, "AAA00001_1696681410696216000_3_0", id, 1)
				msgs[i] = []byte(strings.Replace(msg, "Session-Id", tc.header, 1))
				if tc.affinity.Session {
					key := gecholog.SessionOfID([]byte(id))
					router, _, _ := br.SessionRouter("/p/", key)
					br.Remember(key, []byte(router)) // its first call's transaction
				}
			}
			noKey := br.Sessions().NoKey // the setup's
			i := 0
			for b.Loop() {
				if len(h.Handle(msgs[i%len(msgs)])) == 0 {
					b.Fatal("no router chosen")
				}
				i++
			}
			s := br.Sessions()
			if s.Spilled*100 > s.Keyed || br.Stats().Calls[broker.Panicked] > 0 || s.NoKey > noKey {
				b.Fatalf("%+v, %d panicked: calls off their session's router", s, br.Stats().Calls[broker.Panicked])
			}
			if tc.affinity.Session && s.Remembered < s.Keyed*99/100 {
				b.Fatalf("%+v: calls not to their remembered router", s)
			}
		})
	}
}

// BenchmarkRequestManyPools chooses in one of 100 pools of 10 routers.
func BenchmarkRequestManyPools(b *testing.B) {
	var pools []broker.Pool
	for i := range 100 {
		p := broker.Pool{Ingress: fmt.Sprintf("/pool%d/", i)}
		for j := range 10 {
			p.Routers = append(p.Routers, broker.Router{Path: fmt.Sprintf("/pool%d/r%d/", i, j), Weight: 1})
		}
		pools = append(pools, p)
	}
	h := benchHandler(b, pools, 5, slog.LevelInfo)
	msg := []byte(`{"gl_path":"/pool0/"}`)
	for b.Loop() {
		if len(h.Handle(msg)) == 0 {
			b.Fatal("no router chosen")
		}
	}
}

// BenchmarkRequestDebugLog is the same call with debug logging on, which
// formats a line per message: what a disabled level saves.
func BenchmarkRequestDebugLog(b *testing.B) {
	h := benchHandler(b, broker.DefaultPools(), 0, slog.LevelDebug)
	msg := []byte(`{"gl_path":"/azure/"}`)
	for b.Loop() {
		h.Handle(msg)
	}
}

// BenchmarkRequestNotIngress is a request context for a router called
// directly, answered empty.
func BenchmarkRequestNotIngress(b *testing.B) {
	h := benchHandler(b, broker.DefaultPools(), 0, slog.LevelInfo)
	msg := []byte(`{"gl_path":"/azure/gpt4/"}`)
	for b.Loop() {
		h.Handle(msg)
	}
}

// BenchmarkResponse is a response context: a success of a healthy router
// (the common case), the same with gecholog's inbound_headers included,
// and a failure of a router already disabled (a failure storm: calls in
// flight when it was disabled), which changes nothing and writes nothing.
func BenchmarkResponse(b *testing.B) {
	for _, tc := range []struct{ name, msg string }{
		{"success", `{"gl_path":"/azure/gpt4/","egress_status_code":200}`},
		{"success+headers", `{"egress_status_code":200,"gl_path":"/azure/gpt4/","inbound_headers":{"Content-Type":["application/json"],"Date":["Wed, 25 Nov 2026 12:00:00 GMT"],"X-Request-Id":["5c1b3f0e-8d7a-4f7e-9a57-1f0d2c3b4a59"]}}`},
		{"failure-of-disabled", `{"gl_path":"/azure/dud/","egress_status_code":502}`},
	} {
		b.Run(tc.name, func(b *testing.B) {
			h := benchHandler(b, broker.DefaultPools(), 0, slog.LevelInfo)
			msg := []byte(tc.msg)
			h.Handle(msg) // the first failure disables; the rest are the storm
			for b.Loop() {
				if len(h.Handle(msg)) != 0 {
					b.Fatal("a response context got a reply")
				}
			}
		})
	}
}

// BenchmarkParse is the scanner alone, on what gecholog sends in each
// context, without the broker's decision around it.
func BenchmarkParse(b *testing.B) {
	for _, tc := range []struct{ name, msg string }{
		{"request", `{"gl_path":"/azure/"}`},
		{"response", `{"gl_path":"/azure/gpt4/","egress_status_code":200}`},
		{"response+headers", `{"egress_status_code":200,"gl_path":"/azure/gpt4/","inbound_headers":{"Content-Type":["application/json"],"Date":["Wed, 25 Nov 2026 12:00:00 GMT"],"X-Request-Id":["5c1b3f0e-8d7a-4f7e-9a57-1f0d2c3b4a59"]}}`},
		{"request+ingress_headers", sessionMessage},
	} {
		b.Run(tc.name, func(b *testing.B) {
			msg := []byte(tc.msg)
			for b.Loop() {
				if _, err := gecholog.Parse(msg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkMalformed is a message that is not JSON: counted, logged at
// most once per 10 s.
func BenchmarkMalformed(b *testing.B) {
	h := benchHandler(b, broker.DefaultPools(), 0, slog.LevelInfo)
	msg := []byte(`{"gl_path":"/azure/"`)
	for b.Loop() {
		h.Handle(msg)
	}
}

// TestHotPathAllocatesNothing holds the request context and a success
// report to no allocation with a production logger at info, which also
// proves the per-call debug lines cost nothing when debug is off.
func TestHotPathAllocatesNothing(t *testing.T) {
	h := benchHandler(t, broker.DefaultPools(), 1, slog.LevelInfo)
	for _, msg := range []string{
		`{"gl_path":"/azure/"}`,
		`{"gl_path":"/azure/gpt4/"}`,
		`{"gl_path":"/azure/gpt4/","egress_status_code":200}`,
		`{"gl_path":"/azure/gpt4/","egress_status_code":200,"inbound_headers":{"Content-Type":["application/json"]}}`,
		`{"gl_path":"/azure/gpt35turbo/","egress_status_code":502}`,
	} {
		data := []byte(msg)
		if n := testing.AllocsPerRun(1000, func() { h.Handle(data) }); n != 0 {
			t.Errorf("%s: %v allocations per message, want none", msg, n)
		}
	}
}

func TestHotPathAllocatesNothingWithSessionAffinity(t *testing.T) {
	h, _, _ := affinityHandler(t, "", broker.Affinity{Session: true})
	msg := []byte(sessionMessage)
	if n := testing.AllocsPerRun(1000, func() { h.Handle(msg) }); n != 0 {
		t.Errorf("%v allocations per request context with a session, want none", n)
	}
	if s := h.KeyProblems(); s != [4]uint64{} {
		t.Errorf("key problems %v, want none: the message's session id is well formed", s)
	}
}

// TestHotPathAllocatesNothingForEveryStrategy holds a request context to
// no allocation whichever strategy chooses, with the statistics it reads
// present.
func TestHotPathAllocatesNothingForEveryStrategy(t *testing.T) {
	for _, s := range broker.Strategies() {
		t.Run(s, func(t *testing.T) {
			h, msg, _ := strategyHandler(t, s)
			if n := testing.AllocsPerRun(1000, func() { h.Handle(msg) }); n != 0 {
				t.Errorf("%v allocations per request context, want none", n)
			}
		})
	}
}

// budgetHandler serves /azure/ over three priced routers, each with a budget,
// the first of them spent: the calls go to the other two. The pool has
// the budget of its own poolBudget gives (nil: none).
func budgetHandler(tb testing.TB, poolBudget *broker.Budget) (*gecholog.Handler, *broker.Broker) {
	tb.Helper()
	price := &broker.Price{Input: 2, Output: 8, CachedInput: 1}
	pool := broker.Pool{Ingress: "/azure/", Budget: poolBudget}
	for _, name := range []string{"a", "b", "c"} {
		pool.Routers = append(pool.Routers, broker.Router{Path: "/azure/" + name + "/", Weight: 1, Price: price,
			Budget: &broker.Budget{TokensPerMinute: 1e12, RequestsPerMinute: 1e12, SpendPerDay: 1e9, SpendPerMonth: 1e9, TimeZone: "Europe/Stockholm"}})
	}
	pool.Routers[0].Budget = &broker.Budget{RequestsPerMinute: 1}
	b, err := broker.New(broker.Config{Pools: []broker.Pool{pool}, Policy: broker.Policy{DisabledTime: time.Hour}, ID: "bench", Logger: benchLogger(slog.LevelInfo)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { b.Close(context.Background()) })
	if err := b.UsedIn([]byte("/azure/"), []byte("/azure/a/"), broker.Usage{State: broker.UsageKnown, Input: 10}); err != nil {
		tb.Fatal(err)
	}
	return gecholog.NewHandler(b, benchLogger(slog.LevelInfo)), b
}

// roomyPoolBudget is a pool budget of every cap, far from spent.
var roomyPoolBudget = &broker.Budget{TokensPerMinute: 1e12, RequestsPerMinute: 1e12, SpendPerDay: 1e9, SpendPerMonth: 1e9, TimeZone: "Asia/Tokyo"}

// BenchmarkRequestWithBudgets is a request context for a pool whose
// routers all have budgets, one of them spent (issue 23: at most 200 ns
// and no allocation with budgets on).
func BenchmarkRequestWithBudgets(b *testing.B) {
	for _, bc := range []struct {
		name string
		pool *broker.Budget
	}{{"routers", nil}, {"routers and pool", roomyPoolBudget}} {
		b.Run(bc.name, func(b *testing.B) {
			h, br := budgetHandler(b, bc.pool)
			msg := []byte(`{"gl_path":"/azure/"}`)
			for b.Loop() {
				if r := h.Handle(msg); len(r) == 0 || strings.Contains(string(r), "/azure/a/") {
					b.Fatalf("answered %s: want b or c", r)
				}
			}
			if n := br.Stats().Calls[broker.Panicked]; n > 0 {
				b.Fatalf("%d calls by the all-disabled rule", n)
			}
		})
	}
	// The pool's own budget spent: every call stays on the ingress router.
	b.Run("pool spent", func(b *testing.B) {
		h, _ := budgetHandler(b, &broker.Budget{RequestsPerMinute: 1})
		msg := []byte(`{"gl_path":"/azure/"}`)
		for b.Loop() {
			if r := h.Handle(msg); len(r) != 0 {
				b.Fatalf("answered %s: want nothing (the ingress router)", r)
			}
		}
	})
}

func TestHotPathAllocatesNothingWithBudgets(t *testing.T) {
	for name, g := range map[string]*broker.Budget{"routers": nil, "routers and pool": roomyPoolBudget, "pool spent": {RequestsPerMinute: 1}} {
		h, _ := budgetHandler(t, g)
		msg := []byte(`{"gl_path":"/azure/"}`)
		if n := testing.AllocsPerRun(1000, func() { h.Handle(msg) }); n != 0 {
			t.Errorf("%s: %v allocations per request context with budgets, want none", name, n)
		}
	}
}
