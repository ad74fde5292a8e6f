package replica_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/standin"
	"github.com/gecholog/broker/internal/testutil/clocktest"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/kv"
	"github.com/gecholog/broker/replica"
)

// poolCountOf is b's count of the budget of the pool of ingress.
func poolCountOf(b *broker.Broker, ingress string) broker.BudgetCount {
	for _, c := range b.BudgetCounts() {
		if c.Pool == ingress {
			return c
		}
	}
	return broker.BudgetCount{}
}

// TestAPoolBudgetSpentOnTheFleetsCallsKeepsThePoolsCallsOnTheIngressOnEveryReplica
// drives three replicas as gecholog does against /azure/, whose own
// budget allows 10,000 tokens a minute through it, 1,000 a call, over two
// routers with a budget_spent of soonest: whichever routers and replicas
// took them, the 10th call spends it, and every replica then leaves the
// calls on the ingress router; calls through another ingress count
// nowhere; explain and /metrics say why, and nothing was disabled.
func TestAPoolBudgetSpentOnTheFleetsCallsKeepsThePoolsCallsOnTheIngressOnEveryReplica(t *testing.T) {
	t.Parallel() // waits on the fleet more than it computes
	is := is.New(t)
	s := natstest.Start(t)
	pool := poolOf("random", "a", "b")
	pool.BudgetSpent = broker.BudgetSoonest
	pool.Budget = &broker.Budget{TokensPerMinute: 10_000}
	rs := runReplicas(t, replica.Config{NATS: natsconn.Settings{Servers: s.ClientURL()}, Pools: []broker.Pool{pool},
		Policy: broker.Policy{DisabledTime: time.Minute}, MetricsAddr: "127.0.0.1:0"}, 3)
	nc := natstest.Connect(t, s)
	answer := json.RawMessage(`{"object":"chat.completion","usage":{"prompt_tokens":900,"completion_tokens":100,"total_tokens":1000}}`)
	clocktest.MinuteToSpare(t, 30*time.Second) // the budget is a minute's: see the skip below
	start := time.Now()
	chosen := 0
	for call := 1; call <= 30; call++ {
		router := askWith(t, nc, []byte(`{"gl_path":"/azure/"}`))
		if router == "" {
			router = "/azure/" // gecholog keeps the ingress router
		}
		tell(t, nc, router, 200)
		finish(t, nc, standin.Finished{Ingress: "/elsewhere/", Router: "/azure/a/", Latency: time.Millisecond, Answer: answer}) // not the pool's
		finish(t, nc, standin.Finished{Ingress: "/azure/", Router: router, Latency: time.Millisecond, Answer: answer})
		// Each replica hears the transaction before the next call, and
		// knows the call ended: its response context often lands on another
		// replica, and until that one's next word the chooser still counts
		// it in flight, and so as spending, which can take the pool out a
		// call early for a tick (never late). A pool not spent by what was
		// counted is back in by then.
		rs.every(t, 5*time.Second, func(b *broker.Broker) bool {
			if time.Now().Truncate(time.Minute) != start.Truncate(time.Minute) {
				return true // the count started again: skipped below
			}
			c := poolCountOf(b, "/azure/").Minute
			if c.Requests < int64(call) {
				return false
			}
			// The count is seen before the check that takes the pool out
			// once it spends the budget.
			e, _ := b.Explain("/azure/", time.Now())
			return (c.Tokens >= 10_000) == (e.Rule == broker.PoolSpentRule)
		}, "the call counted, and the pool out just when its count spent it")
		if router != "/azure/" {
			chosen++
			is.True(chosen <= 10) // never a call beyond the pool's budget
		}
	}
	if time.Now().Truncate(time.Minute) != start.Truncate(time.Minute) {
		t.Skip("a minute began during the test: the budget's count started again")
	}
	is.Equal(chosen, 10) // the budget, to the call, over both routers
	for i, b := range rs.replicas {
		e, _ := b.Explain("/azure/", time.Now())
		is.Equal(e.Rule, broker.PoolSpentRule)
		is.True(strings.Contains(e.Why, "tokens_per_minute spent"))      // e.Why
		is.Equal(poolCountOf(b, "/azure/").Minute.Tokens, int64(30_000)) // the calls through it, the ingress router's too
		is.Equal(b.Phase("/azure/a/"), broker.Enabled)                   // no failure, no disable
		page := get(t, "http://"+rs.listener(t, i)+"/metrics")
		is.Equal(metricValue(t, page, `broker_pool_budget_out{ingress="/azure/"}`), 1.0)
		is.Equal(metricValue(t, page, `broker_pool_budget_used{budget="tokens_per_minute",ingress="/azure/"}`), 30_000.0)
		is.Equal(metricValue(t, page, `broker_pool_budget_limit{budget="tokens_per_minute",ingress="/azure/"}`), 10_000.0)
		reset := metricValue(t, page, `broker_pool_budget_reset_timestamp_seconds{budget="tokens_per_minute",ingress="/azure/"}`)
		is.Equal(reset, float64(start.Truncate(time.Minute).Add(time.Minute).Unix()))
	}
}

// TestPoolBudgetCountsSurviveARestartOfEveryReplica counts 40 calls
// through /azure/ on three replicas, stops them all and starts three new
// ones: they count exactly what the first did, from the bucket's key
// "pool./azure/", beside the router's own.
func TestPoolBudgetCountsSurviveARestartOfEveryReplica(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	pool := poolOf("random", "ptu", "payg")
	price := &broker.Price{Input: 2, Output: 8}
	pool.Routers[0].Price, pool.Routers[1].Price = price, price
	pool.Routers[0].Budget = &broker.Budget{RequestsPerMinute: 1e6}
	pool.Budget = &broker.Budget{TokensPerMinute: 1e9, SpendPerDay: 1e6, SpendPerMonth: 1e6, TimeZone: "Australia/Sydney"}
	cfg := replica.Config{NATS: natsconn.Settings{Servers: s.ClientURL()}, Pools: []broker.Pool{pool}, Policy: broker.Policy{DisabledTime: time.Minute}}
	first := runReplicas(t, cfg, 3)
	nc := natstest.Connect(t, s)
	answer := json.RawMessage(`{"object":"chat.completion","usage":{"prompt_tokens":900,"completion_tokens":100,"total_tokens":1000}}`)
	const calls = 40
	for i := range calls {
		finish(t, nc, standin.Finished{Ingress: "/azure/", Router: pool.Routers[i%2].Path, Latency: time.Millisecond, Answer: answer})
	}
	first.every(t, 5*time.Second, func(b *broker.Broker) bool { return poolCountOf(b, "/azure/").Day.Requests == calls }, "every call counted")
	want := poolCountOf(first.replicas[0], "/azure/")
	is.Equal(want.Day.Tokens, int64(calls*1000))
	first.stop()

	js, err := jetstream.New(nc)
	is.NoErr(err)
	store, err := js.KeyValue(context.Background(), kv.UsageBucket(replica.DefaultBucket))
	is.NoErr(err)
	keys, err := store.ListKeys(context.Background())
	is.NoErr(err)
	var listed []string
	for k := range keys.Keys() {
		listed = append(listed, k)
	}
	is.True(strings.Contains(strings.Join(listed, " "), "pool./azure/")) // what nats kv ls shows: the pool's key
	is.True(strings.Contains(strings.Join(listed, " "), "/azure/ptu/"))  // and the router's

	second := runReplicas(t, cfg, 3)
	for i, b := range second.replicas {
		if got := poolCountOf(b, "/azure/"); !sameBudgetCount(got, want) {
			t.Fatalf("replica-%d started with %+v, want %+v: counts lost or counted twice", i+1, got, want)
		}
	}
}
