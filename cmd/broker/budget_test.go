package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/internal/standin"
	"github.com/gecholog/broker/internal/testutil/clocktest"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/replica"
)

// TestStatusShowsWhatTheFleetUsedOfEachBudget runs two replicas whose
// pools give /azure/gpt4/ a budget, publishes 5 of its calls on
// gecholog's logger subject: status, as text and as JSON, shows each cap
// with what the replicas counted (from the bucket of budget counts) and
// when it resets, and a spent cap says so.
func TestStatusShowsWhatTheFleetUsedOfEachBudget(t *testing.T) {
	t.Parallel()
	is := is.New(t)
	s := natstest.Start(t)
	pools := writeFile(t, "pools.json", []byte(`{"pools": [{"ingress": "/azure/", "routers": [
		{"path": "/azure/gpt4/", "price": {"input": 2, "output": 8}, "budget": {"requests_per_minute": 5, "spend_per_day": 100, "time_zone": "Asia/Tokyo"}},
		{"path": "/azure/gpt35turbo/", "priority": 1}]}]}`))
	fleet := startFleet(t, s, 2, func(c *replica.Config) {
		p, err := readPools(pools)
		if err != nil {
			t.Fatal(err)
		}
		c.Pools = p
	})
	nc := natstest.Connect(t, s)
	answer := json.RawMessage(`{"usage":{"prompt_tokens":900,"completion_tokens":100}}`)
	// The 5 calls spend this minute's requests: begin with time to spare
	// (this failed when the minute turned 0.1 s after the fifth call).
	clocktest.MinuteToSpare(t, 20*time.Second)
	start := time.Now()
	for range 5 {
		is.NoErr(nc.Publish(replica.DefaultLoggerSubject, standin.Transaction(standin.Finished{Ingress: "/azure/", Router: "/azure/gpt4/", Latency: time.Millisecond, Answer: answer})))
	}
	is.NoErr(nc.Flush())
	ops := env("NATS_URL", s.ClientURL(), "BROKER_POOLS", pools)
	var cells []any
	natstest.Eventually(t, 10*time.Second, func() bool {
		if time.Now().Truncate(time.Minute) != start.Truncate(time.Minute) {
			return true // a very slow machine: skipped below
		}
		for _, r := range fleet.Replicas {
			if r.Broker().BudgetCounts()[0].Day.Requests != 5 {
				return false
			}
		}
		for _, row := range statusJSON(t, ops) {
			if row["router"] == "/azure/gpt4/" {
				cells, _ = row["budget"].([]any)
				return len(cells) == 2 && cells[0].(map[string]any)["used"] == 5.0 // written to the bucket
			}
		}
		return false
	}, "status showing the 5 calls")
	if time.Now().Truncate(time.Minute) != start.Truncate(time.Minute) {
		t.Skip("a minute began during the test: the budget's count started again")
	}
	for _, row := range statusJSON(t, ops) {
		if row["router"] == "/azure/gpt4/" {
			is.Equal(row["state"], "budget") // out until its minute resets, not disabled
		}
	}
	rpm, spend := cells[0].(map[string]any), cells[1].(map[string]any)
	is.Equal(rpm["budget"], "requests_per_minute")
	is.Equal(rpm["limit"], 5.0)
	is.Equal(rpm["spent"], true) // 5 of 5
	is.Equal(rpm["resets"], start.Truncate(time.Minute).Add(time.Minute).UTC().Format(time.RFC3339))
	is.Equal(spend["budget"], "spend_per_day")
	is.Equal(spend["spent"], false)
	tokyo, _ := time.LoadLocation("Asia/Tokyo")
	y, m, d := start.In(tokyo).Date()
	is.Equal(spend["resets"], time.Date(y, m, d+1, 0, 0, 0, 0, tokyo).UTC().Format(time.RFC3339)) // midnight in Tokyo
	out := op(t, ops, "status")
	t.Log(out)
	says(t, "status", out, "budgets, as the replicas counted them:")
	line := lineWith(out, "requests_per_minute")
	says(t, "status", line, "/azure/gpt4/")
	says(t, "status", line, "spent: out until it resets")
	says(t, "status", lineWith(out, "spend_per_day"), "0.0130") // 5 × (900 × 2 + 100 × 8) per million
}

// TestStatusShowsWhatTheCallsThroughAPoolUsedOfItsBudget runs two
// replicas whose pools give /azure/ a budget of its own, publishes 4 calls
// through it: status shows the pool's caps, each row of the pool in state
// "budget" once a cap is spent, as JSON and as text.
func TestStatusShowsWhatTheCallsThroughAPoolUsedOfItsBudget(t *testing.T) {
	t.Parallel()
	is := is.New(t)
	s := natstest.Start(t)
	pools := writeFile(t, "pools.json", []byte(`{"pools": [{"ingress": "/azure/", "budget": {"requests_per_minute": 4, "spend_per_month": 50}, "routers": [
		{"path": "/azure/gpt4/", "price": {"input": 2, "output": 8}}, {"path": "/azure/gpt35turbo/", "price": {"input": 1, "output": 1}}]}]}`))
	startFleet(t, s, 2, func(c *replica.Config) {
		p, err := readPools(pools)
		if err != nil {
			t.Fatal(err)
		}
		c.Pools = p
	})
	nc := natstest.Connect(t, s)
	answer := json.RawMessage(`{"usage":{"prompt_tokens":900,"completion_tokens":100}}`)
	// The 4 calls spend this minute's requests: begin with time to spare
	// (this failed when the minute turned 0.6 s after the fourth call, in
	// the count's 1st quiet run on 65ae6bc).
	clocktest.MinuteToSpare(t, 20*time.Second)
	start := time.Now()
	for _, router := range []string{"/azure/gpt4/", "/azure/gpt4/", "/azure/gpt35turbo/", "/azure/"} {
		is.NoErr(nc.Publish(replica.DefaultLoggerSubject, standin.Transaction(standin.Finished{Ingress: "/azure/", Router: router, Latency: time.Millisecond, Answer: answer})))
	}
	is.NoErr(nc.Flush())
	ops := env("NATS_URL", s.ClientURL(), "BROKER_POOLS", pools)
	var rows []map[string]any
	natstest.Eventually(t, 10*time.Second, func() bool {
		if time.Now().Truncate(time.Minute) != start.Truncate(time.Minute) {
			return true // a very slow machine: skipped below
		}
		rows = statusJSON(t, ops)
		cells, _ := rows[0]["pool_budget"].([]any)
		return len(cells) == 2 && cells[0].(map[string]any)["used"] == 4.0 // written to the bucket
	}, "status showing the 4 calls through the pool")
	if time.Now().Truncate(time.Minute) != start.Truncate(time.Minute) {
		t.Skip("a minute began during the test: the budget's count started again")
	}
	for _, row := range rows {
		is.Equal(row["state"], "budget") // every router of the pool: out with it
		is.Equal(row["budget"], nil)     // no budget of its own
	}
	cells := rows[0]["pool_budget"].([]any)
	is.Equal(cells[0].(map[string]any)["spent"], true)
	is.Equal(cells[1].(map[string]any)["budget"], "spend_per_month")
	out := op(t, ops, "status")
	t.Log(out)
	line := lineWith(out, "requests_per_minute")
	says(t, "status", line, "pool /azure/")
	says(t, "status", line, "spent: out until it resets")
	says(t, "status", lineWith(out, "spend_per_month"), "0.0062") // 2 × 0.0026 at gpt4's price, 0.001 at gpt35turbo's, nothing at the ingress router's (no price)
}

// lineWith is the first line of out holding s; "" when none does.
func lineWith(out, s string) string {
	for l := range strings.SplitSeq(out, "\n") {
		if strings.Contains(l, s) {
			return l
		}
	}
	return ""
}
