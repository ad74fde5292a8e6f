package replica_test

import (
	"context"
	"encoding/json"
	"math"
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

// TestABudgetSpentOnTheFleetsCallsTakesTheRouterOutOnEveryReplica drives
// three replicas as gecholog does (request context through the queue
// group, response context, transaction on the logger subject) against a
// tier-0 router with a budget of 10,000 tokens a minute, 1,000 a call: it
// is out on every replica at its 10th call whichever replicas answered
// them, the calls spill to tier 1, explain and /metrics say why, and
// nothing was disabled.
func TestABudgetSpentOnTheFleetsCallsTakesTheRouterOutOnEveryReplica(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	pool := poolOf("random", "ptu", "payg@1")
	pool.Routers[0].Price = &broker.Price{Input: 2, Output: 8, CachedInput: 1}
	pool.Routers[0].Budget = &broker.Budget{TokensPerMinute: 10_000}
	rs := runReplicas(t, replica.Config{NATS: natsconn.Settings{Servers: s.ClientURL()}, Pools: []broker.Pool{pool},
		Policy: broker.Policy{DisabledTime: time.Minute}, MetricsAddr: "127.0.0.1:0"}, 3)
	nc := natstest.Connect(t, s)
	answer := json.RawMessage(`{"object":"chat.completion","usage":{"prompt_tokens":900,"completion_tokens":100,"total_tokens":1000}}`)
	clocktest.MinuteToSpare(t, 30*time.Second) // the budget is a minute's: see the skip below
	start := time.Now()
	onPTU := 0
	for call := 1; call <= 30; call++ {
		router := askWith(t, nc, []byte(`{"gl_path":"/azure/"}`))
		tell(t, nc, router, 200)
		finish(t, nc, standin.Finished{Ingress: "/azure/", Router: router, Latency: time.Millisecond, Answer: answer})
		if router != "/azure/ptu/" {
			continue
		}
		onPTU++
		is.True(onPTU <= 10) // never a call beyond the budget
		// Each replica hears the transaction before the next call.
		rs.every(t, 5*time.Second, func(b *broker.Broker) bool {
			if time.Now().Truncate(time.Minute) != start.Truncate(time.Minute) {
				return true // the count started again: skipped below
			}
			for _, st := range b.Budgets(time.Now()) {
				if st.Router == "/azure/ptu/" && st.Used >= float64(onPTU*1000) {
					// The count is seen before the check that takes the
					// router out once it spends the budget.
					e, _ := b.Explain("/azure/", time.Now())
					return st.Used < 10_000 || e.Routers[0].State == "budget"
				}
			}
			return false
		}, "the call counted, and the PTU out once that spent its budget")
	}
	if time.Now().Truncate(time.Minute) != start.Truncate(time.Minute) {
		t.Skip("a minute began during the test: the budget's count started again")
	}
	is.Equal(onPTU, 10) // the budget, to the call
	rs.every(t, 5*time.Second, func(b *broker.Broker) bool {
		e, _ := b.Explain("/azure/", time.Now())
		return e.Routers[0].State == "budget" && strings.Contains(e.Routers[0].Why, "tokens_per_minute spent (10000 of 10000 used)")
	}, "the PTU out for its budget")
	for i, b := range rs.replicas {
		is.Equal(b.Phase("/azure/ptu/"), broker.Enabled) // no failure, no disable, no probe
		page := get(t, "http://"+rs.listener(t, i)+"/metrics")
		is.Equal(metricValue(t, page, `broker_budget_out{router="/azure/ptu/"}`), 1.0)
		is.Equal(metricValue(t, page, `broker_budget_used{budget="tokens_per_minute",router="/azure/ptu/"}`), 10_000.0)
		is.Equal(metricValue(t, page, `broker_budget_limit{budget="tokens_per_minute",router="/azure/ptu/"}`), 10_000.0)
		reset := metricValue(t, page, `broker_budget_reset_timestamp_seconds{budget="tokens_per_minute",router="/azure/ptu/"}`)
		is.Equal(reset, float64(start.Truncate(time.Minute).Add(time.Minute).Unix()))
	}
}

// budgetCountOf is b's count of router's budget.
func budgetCountOf(b *broker.Broker, router string) broker.BudgetCount {
	for _, c := range b.BudgetCounts() {
		if c.Router == router {
			return c
		}
	}
	return broker.BudgetCount{}
}

// sameBudgetCount reports whether a and b count the same periods alike.
func sameBudgetCount(a, b broker.BudgetCount) bool {
	same := func(x, y broker.Used) bool {
		return x.Start.Equal(y.Start) && x.Tokens == y.Tokens && x.Requests == y.Requests && math.Abs(x.Spend-y.Spend) < 1e-12
	}
	return same(a.Minute, b.Minute) && same(a.Day, b.Day) && same(a.Month, b.Month)
}

// TestBudgetCountsSurviveARestartOfEveryReplicaAndTheirBucketsDeletion
// counts 40 calls on three replicas, stops them all and starts three new
// ones: before they hear a call they count exactly what the first three
// did, in every period. Then the bucket of counts is deleted: the
// replicas make it again and write their counts, said in one line, and a
// replica started after reads them.
func TestBudgetCountsSurviveARestartOfEveryReplicaAndTheirBucketsDeletion(t *testing.T) {
	t.Parallel() // waits on the fleet more than it computes
	is := is.New(t)
	s := natstest.Start(t)
	pool := poolOf("random", "ptu", "payg@1")
	pool.Routers[0].Price = &broker.Price{Input: 2, Output: 8, CachedInput: 1}
	pool.Routers[0].Budget = &broker.Budget{TokensPerMinute: 1e9, RequestsPerMinute: 1e6, SpendPerDay: 1e6, SpendPerMonth: 1e6, TimeZone: "America/New_York"}
	cfg := replica.Config{NATS: natsconn.Settings{Servers: s.ClientURL()}, Pools: []broker.Pool{pool}, Policy: broker.Policy{DisabledTime: time.Minute}}
	first := runReplicas(t, cfg, 3)
	nc := natstest.Connect(t, s)
	answer := json.RawMessage(`{"object":"chat.completion","usage":{"prompt_tokens":900,"completion_tokens":100,"total_tokens":1000}}`)
	const calls = 40
	for range calls {
		finish(t, nc, standin.Finished{Ingress: "/azure/", Router: "/azure/ptu/", Latency: time.Millisecond, Answer: answer})
	}
	first.every(t, 5*time.Second, func(b *broker.Broker) bool { return budgetCountOf(b, "/azure/ptu/").Day.Requests == calls }, "every call counted")
	want := budgetCountOf(first.replicas[0], "/azure/ptu/")
	t.Logf("counted: %+v", want)
	is.Equal(want.Day.Tokens, int64(calls*1000))
	is.True(math.Abs(want.Month.Spend-calls*(900*2+100*8)/1e6) < 1e-9)
	first.stop() // every replica, each writing what it counted

	second := runReplicas(t, cfg, 3)
	for i, b := range second.replicas {
		got := budgetCountOf(b, "/azure/ptu/")
		if !sameBudgetCount(got, want) {
			t.Fatalf("replica-%d started with %+v, want %+v: counts lost or counted twice", i+1, got, want)
		}
	}

	// The bucket deleted under the running replicas.
	js, err := jetstream.New(nc)
	is.NoErr(err)
	is.NoErr(js.DeleteKeyValue(context.Background(), kv.UsageBucket(replica.DefaultBucket)))
	natstest.Eventually(t, 10*time.Second, func() bool {
		store, err := js.KeyValue(context.Background(), kv.UsageBucket(replica.DefaultBucket))
		if err != nil {
			return false
		}
		_, err = store.Get(context.Background(), "/azure/ptu/")
		return err == nil
	}, "the bucket made again, with the count")
	third := runReplicas(t, cfg, 1)
	is.True(sameBudgetCount(budgetCountOf(third.replicas[0], "/azure/ptu/"), want)) // nothing lost
	natstest.Eventually(t, 5*time.Second, func() bool {
		for _, l := range second.logs {
			if strings.Contains(l.String(), "the bucket of budget counts is gone (deleted, or JetStream is down)") {
				return true
			}
		}
		return false
	}, "a replica saying the bucket was deleted")
}
