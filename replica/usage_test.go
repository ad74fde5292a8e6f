package replica_test

// Tokens and spend from gecholog's transaction log: every replica hears
// every call, so every replica counts the fleet's totals.

import (
	"encoding/json"
	"math"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/standin"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/replica"
	"github.com/gecholog/broker/statuspage"
)

// metricValue is the value of the series name{labels} in a /metrics
// page; labels as the page writes them, sorted by name.
func metricValue(t *testing.T, page, series string) float64 {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("/metrics has no series %s", series)
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatalf("%s: %v", series, err)
	}
	return v
}

// streamed is a streamed answer's events as gecholog logs them: its body,
// which is no JSON, as one JSON string.
func streamed(events ...string) json.RawMessage {
	b, _ := json.Marshal(strings.Join(events, "\n\n") + "\n\n")
	return b
}

func TestEveryReplicaCountsTheFleetsTokensAndSpendFromTheTransactionLog(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	pool := poolOf("random", "gpt4", "claude", "gpt35turbo")
	pool.Routers[0].Price = &broker.Price{Input: 2.5, Output: 10, CachedInput: 1.25}
	pool.Routers[1].Price = &broker.Price{Input: 3, Output: 15, CachedInput: 0.3}
	rs := runReplicas(t, replica.Config{NATS: natsconn.Settings{Servers: s.ClientURL()}, Pools: []broker.Pool{pool},
		Policy: broker.Policy{DisabledTime: time.Minute}, MetricsAddr: "127.0.0.1:0"}, 3)
	nc := natstest.Connect(t, s)

	// gpt4 answers OpenAI's way: 1,000 of its 2,000 prompt tokens cached.
	openai := json.RawMessage(`{"object":"chat.completion","choices":[{"message":{"content":"Hi"}}],
		"usage":{"prompt_tokens":2000,"completion_tokens":300,"total_tokens":2300,"prompt_tokens_details":{"cached_tokens":1000}}}`)
	for range 3 {
		finish(t, nc, standin.Finished{Ingress: "/azure/", Router: "/azure/gpt4/", Latency: time.Millisecond, Answer: openai})
	}
	// claude streams Anthropic's events: the input in message_start, the
	// output so far in message_delta.
	anthropic := streamed(
		"event: message_start\n"+`data: {"type":"message_start","message":{"usage":{"input_tokens":25,"cache_creation_input_tokens":5,"cache_read_input_tokens":100,"output_tokens":1}}}`,
		"event: content_block_delta\n"+`data: {"type":"content_block_delta","delta":{"type":"text_delta","text":"Hello"}}`,
		"event: message_delta\n"+`data: {"type":"message_delta","usage":{"output_tokens":15}}`,
		"event: message_stop\n"+`data: {"type":"message_stop"}`)
	for range 2 {
		finish(t, nc, standin.Finished{Ingress: "/azure/", Router: "/azure/claude/", Latency: time.Millisecond, Answer: anthropic})
	}
	// gpt35turbo streams without usage: the client did not ask for it.
	finish(t, nc, standin.Finished{Ingress: "/azure/", Router: "/azure/gpt35turbo/", Latency: time.Millisecond,
		Answer: streamed(`data: {"choices":[{"delta":{"content":"Hi"}}]}`, `data: [DONE]`)})
	// Forged or broken: 10^15 tokens twice (capped, logged once), a
	// negative count (unreadable). None of them is counted.
	start := time.Now()
	for _, usage := range []string{`{"prompt_tokens":1000000000000000,"completion_tokens":1}`, `{"prompt_tokens":1000000000000000}`, `{"prompt_tokens":-5,"completion_tokens":3}`} {
		finish(t, nc, standin.Finished{Ingress: "/azure/", Router: "/azure/gpt4/", Latency: time.Millisecond, Answer: json.RawMessage(`{"usage":` + usage + `}`)})
	}
	// The ingress's own outbound (a call the broker left there) is "other".
	finish(t, nc, standin.Finished{Ingress: "/azure/", Router: "/azure/", Latency: time.Millisecond,
		Answer: json.RawMessage(`{"usage":{"prompt_tokens":10,"completion_tokens":5}}`)})

	usageOf := func(b *broker.Broker, router string) broker.UsageCounts {
		for _, u := range b.Stats().Usage {
			if u.Router == router {
				return u.UsageCounts
			}
		}
		return broker.UsageCounts{}
	}
	rs.every(t, 10*time.Second, func(b *broker.Broker) bool {
		gpt4 := usageOf(b, "/azure/gpt4/")
		return gpt4.Input == 3000 && gpt4.Capped == 2 && gpt4.Unreadable == 1 && usageOf(b, "/azure/claude/").Output == 30 &&
			usageOf(b, "/azure/gpt35turbo/").Unknown == 1 && usageOf(b, broker.OtherRouter).Input == 10
	}, "every transaction counted")

	gpt4Spend := 3 * (1000*2.5 + 300*10 + 1000*1.25) / 1e6
	claudeSpend := 2 * (30*3 + 15*15 + 100*0.3) / 1e6
	for i := range rs.fleet.Replicas {
		page := get(t, "http://"+rs.listener(t, i)+"/metrics")
		value := func(series string) float64 { return metricValue(t, page, series) }
		is.Equal(value(`broker_tokens_total{kind="input",router="/azure/gpt4/"}`), 3000.)        // the prompt less its cached part, 3 calls
		is.Equal(value(`broker_tokens_total{kind="cached_input",router="/azure/gpt4/"}`), 3000.) // the cached part
		is.Equal(value(`broker_tokens_total{kind="output",router="/azure/gpt4/"}`), 900.)
		is.Equal(value(`broker_tokens_total{kind="input",router="/azure/claude/"}`), 60.) // input_tokens and the cache write
		is.Equal(value(`broker_tokens_total{kind="cached_input",router="/azure/claude/"}`), 200.)
		is.Equal(value(`broker_tokens_total{kind="output",router="/azure/claude/"}`), 30.)          // message_delta's, not message_start's
		is.True(math.Abs(value(`broker_spend_total{router="/azure/gpt4/"}`)-gpt4Spend) < 1e-12)     // tokens × price per million
		is.True(math.Abs(value(`broker_spend_total{router="/azure/claude/"}`)-claudeSpend) < 1e-12) // at claude's own price
		is.True(!strings.Contains(page, `broker_spend_total{router="/azure/gpt35turbo/"}`))         // no price, no spend
		is.Equal(value(`broker_usage_unknown_total{router="/azure/gpt35turbo/"}`), 1.)              // streamed without usage
		is.Equal(value(`broker_tokens_total{kind="input",router="/azure/gpt35turbo/"}`), 0.)
		is.Equal(value(`broker_usage_refused_total{reason="capped",router="/azure/gpt4/"}`), 2.)                                                      // 10^15 tokens
		is.Equal(value(`broker_usage_refused_total{reason="unreadable",router="/azure/gpt4/"}`), 1.)                                                  // a negative count
		is.Equal(value(`broker_tokens_total{kind="input",router="other"}`), 10.)                                                                      // the ingress's own outbound
		is.Equal(countLines(rs.logs[i].String(), "a call's token usage is above the per-call cap: its tokens are not counted", start, time.Now()), 1) // once a minute per router
	}

	// explain and the status page show them too.
	var x replica.Explained
	is.NoErr(json.Unmarshal([]byte(get(t, "http://"+rs.listener(t, 1)+"/explain?ingress=/azure/")), &x))
	for _, r := range x.Routers {
		switch r.Router {
		case "/azure/gpt4/":
			is.Equal(r.Tokens, replica.ExplainedTokens{Input: 3000, Output: 900, CachedInput: 3000}) // explain's tokens
			is.True(r.Spend != nil && math.Abs(*r.Spend-gpt4Spend) < 1e-12)                          // explain's spend
			is.True(r.CostPerCall != nil && *r.CostPerCall > 0)                                      // what a call costs, as cost reads it
		case "/azure/gpt35turbo/":
			is.Equal(r.Spend, nil)              // no price
			is.Equal(r.CostPerCall, nil)        // so no cost per call
			is.Equal(r.UsageUnknown, uint64(1)) // its call whose tokens were not said
		}
	}
	var snap statuspage.Snapshot
	is.NoErr(json.Unmarshal([]byte(get(t, "http://"+rs.listener(t, 2)+"/status.json")), &snap))
	claude := snap.Pools[0].Routers[1]
	is.Equal(claude.Router, "/azure/claude/")
	is.Equal(claude.Tokens, statuspage.Tokens{Input: 60, Output: 30, CachedInput: 200}) // the page's tokens
	is.True(claude.Spend != nil && math.Abs(*claude.Spend-claudeSpend) < 1e-12)         // the page's spend
}
