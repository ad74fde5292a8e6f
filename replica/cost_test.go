package replica_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/standin"
)

// answered is an OpenAI chat completion whose usage says in prompt and
// out completion tokens, as gecholog logs it in inbound_payload.
func answered(in, out int) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`{"object":"chat.completion","choices":[{"message":{"content":"ok"}}],"usage":{"prompt_tokens":%d,"completion_tokens":%d}}`, in, out))
}

// cheapestOf is the router the explanation of /azure/ on b gives every
// call, or "" when none takes them all.
func cheapestOf(b *broker.Broker) string {
	e, _ := b.Explain("/azure/", time.Now())
	for _, r := range e.Routers {
		if r.Expected == 1 {
			return r.Router
		}
	}
	return ""
}

// Replicas hear every call's tokens on gecholog's transaction log, so
// they all price the pool's routers at the same average call, and all
// send the calls to the cheapest; when the answers come to outweigh the
// prompts, the router cheap on input and dear on output loses them.
func TestCostSendsCallsToTheRouterCheapestForTheTokensTheFleetHears(t *testing.T) {
	is := is.New(t)
	pool := poolOf("cost", "inp", "outp", "dear")
	pool.Routers[0].Price = &broker.Price{Input: 0.4, CachedInput: 0.4, Output: 16}
	pool.Routers[1].Price = &broker.Price{Input: 2, CachedInput: 2, Output: 6}
	pool.Routers[2].Price = &broker.Price{Input: 3, CachedInput: 3, Output: 20}
	rs, nc, count := choosing(t, pool)
	is.Equal(count(40), map[string]int{"/azure/outp/": 40}) // by the default mix, 3 to 1

	// Prompts of 1000 tokens, answers of 50: per call inp 0.0012, outp 0.0023.
	for range 20 {
		finish(t, nc, standin.Finished{Ingress: "/azure/", Router: "/azure/dear/", Latency: time.Millisecond, Answer: answered(1000, 50)})
	}
	rs.every(t, 5*time.Second, func(b *broker.Broker) bool { return cheapestOf(b) == "/azure/inp/" }, "inp is the cheapest on every replica")
	is.Equal(count(40), map[string]int{"/azure/inp/": 40}) // cheap on input takes the calls

	// Answers of 2000 tokens come to dominate: outp is cheaper again.
	for range 40 {
		finish(t, nc, standin.Finished{Ingress: "/azure/", Router: "/azure/inp/", Latency: time.Millisecond, Answer: answered(100, 2000)})
	}
	all := broker.TokenMix{Input: (20*1000 + 40*100) / 60.0, Output: (20*50 + 40*2000) / 60.0} // the average of the 60 calls
	rs.every(t, 5*time.Second, func(b *broker.Broker) bool {
		v, _ := b.PoolView("/azure/", time.Now())
		return v.Mix == all
	}, "every replica priced the routers at the average of every call")
	for _, b := range rs.replicas {
		is.Equal(cheapestOf(b), "/azure/outp/") // outp is the cheapest again
	}
	is.Equal(count(40), map[string]int{"/azure/outp/": 40}) // the order flipped
}
