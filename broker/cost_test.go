package broker_test

import (
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
)

// costPool is /c/ choosing by cost: /c/inp/ cheap on input and dear on
// output, /c/outp/ the other way round, /c/dear/ dear on both, and a
// tier-1 /c/spare/.
func costPool() []broker.Pool {
	return []broker.Pool{{Ingress: "/c/", Strategy: "cost", Routers: []broker.Router{
		{Path: "/c/inp/", Weight: 1, Price: &broker.Price{Input: 0.4, CachedInput: 0.1, Output: 16}},
		{Path: "/c/outp/", Weight: 1, Price: &broker.Price{Input: 2, CachedInput: 1, Output: 6}},
		{Path: "/c/dear/", Weight: 1, Price: &broker.Price{Input: 3, CachedInput: 3, Output: 20}},
		{Path: "/c/spare/", Weight: 1, Priority: 1, Price: &broker.Price{Input: 0, Output: 0}},
	}}}
}

// tally is where n request contexts for ingress go.
func tally(b *broker.Broker, ingress string, n int) map[string]int {
	got := map[string]int{}
	for range n {
		got[pick(b, ingress)]++
	}
	return got
}

// Per call at the default mix (750 input, 250 output): inp 0.0043,
// outp 0.003, dear 0.00725. With prompts of 1000 tokens and answers of
// 50: inp 0.0012, outp 0.0023. With answers of 2000 tokens and prompts
// of 100: inp 0.03204, outp 0.0122.
func TestCostFollowsThePoolsMixOfTokens(t *testing.T) {
	is := is.New(t)
	b, _ := newBroker(t, broker.Config{Pools: costPool()})
	is.Equal(tally(b, "/c/", 200), map[string]int{"/c/outp/": 200}) // by the default mix, 3 to 1

	for range 50 { // prompts dominate
		is.NoErr(b.Used([]byte("/c/inp/"), known(1000, 50, 0)))
	}
	b.Refresh(time.Now())                                          // the order is taken off the request's path
	is.Equal(tally(b, "/c/", 200), map[string]int{"/c/inp/": 200}) // cheap on input wins

	for range 500 { // answers dominate: 500 calls of 2000 output tokens outweigh the 50 prompts
		is.NoErr(b.Used([]byte("/c/outp/"), known(100, 2000, 0)))
	}
	b.Refresh(time.Now())
	is.Equal(tally(b, "/c/", 200), map[string]int{"/c/outp/": 200}) // dear on output loses

	v, ok := b.PoolView("/c/", time.Now())
	is.True(ok && v.MixHeard)
	is.Equal(v.Mix, broker.TokenMix{Input: (50*1000 + 500*100) / 550.0, Output: (50*50 + 500*2000) / 550.0}) // the pool's average call
}

// Cached input is priced apart: a router whose cache reads are cheap wins
// once most of the prompt is read from the cache.
func TestCostPricesCachedInputApart(t *testing.T) {
	is := is.New(t)
	b, _ := newBroker(t, broker.Config{Pools: []broker.Pool{{Ingress: "/c/", Strategy: "cost", Routers: []broker.Router{
		{Path: "/c/cache/", Weight: 1, Price: &broker.Price{Input: 3, CachedInput: 0.3, Output: 10}},
		{Path: "/c/flat/", Weight: 1, Price: &broker.Price{Input: 2, CachedInput: 2, Output: 10}},
	}}}})
	is.Equal(tally(b, "/c/", 100), map[string]int{"/c/flat/": 100}) // no cache heard of: input decides
	is.NoErr(b.Used([]byte("/c/flat/"), known(100, 100, 5000)))
	b.Refresh(time.Now())
	is.Equal(tally(b, "/c/", 100), map[string]int{"/c/cache/": 100}) // mostly cached: the cheap cache wins
}

func TestCostSharesTiesByWeight(t *testing.T) {
	is := is.New(t)
	same := &broker.Price{Input: 1, CachedInput: 1, Output: 2}
	b, _ := newBroker(t, broker.Config{Pools: []broker.Pool{{Ingress: "/c/", Strategy: "cost", Routers: []broker.Router{
		{Path: "/c/a/", Weight: 1, Price: same},
		{Path: "/c/dear/", Weight: 5, Price: &broker.Price{Input: 1, CachedInput: 1, Output: 2.01}},
		{Path: "/c/b/", Weight: 3, Price: same},
	}}}})
	got := tally(b, "/c/", 8000)
	is.Equal(got["/c/dear/"], 0)                        // a little dearer: no call, whatever its weight
	is.True(got["/c/a/"] > 1700 && got["/c/a/"] < 2300) // 1 : 3 between the two as cheap (2000 expected)
	is.Equal(got["/c/a/"]+got["/c/b/"], 8000)
}

// The cheapest router out (disabled, or no rate limit left): the next
// cheapest takes the calls; the whole tier out: the next tier.
func TestCostPassesOverARouterOutOrWithoutHeadroomToTheNextCheapest(t *testing.T) {
	is := is.New(t)
	b, _ := newBroker(t, broker.Config{Pools: costPool()})
	is.Equal(tally(b, "/c/", 100), map[string]int{"/c/outp/": 100})

	b.Report([]byte("/c/outp/"), 503, 20*time.Second)              // disabled
	is.Equal(tally(b, "/c/", 100), map[string]int{"/c/inp/": 100}) // the next cheapest

	spent := &broker.RateLimits{RemainingRequests: 0, LimitRequests: 100, RemainingTokens: -1, LimitTokens: -1, ResetRequests: time.Now().Add(time.Hour)}
	is.NoErr(b.Finished([]byte("/c/inp/"), time.Millisecond, spent))
	is.Equal(tally(b, "/c/", 100), map[string]int{"/c/dear/": 100}) // the next, while inp has none left

	is.NoErr(b.Finished([]byte("/c/dear/"), time.Millisecond, spent))
	is.Equal(tally(b, "/c/", 100), map[string]int{"/c/spare/": 100}) // tier 0 has none left: tier 1

	e, ok := b.Explain("/c/", time.Now())
	is.True(ok)
	is.Equal(e.Rule, broker.ByStrategy)
	is.Equal(e.Tier, 1)
	for _, r := range e.Routers {
		switch r.Router {
		case "/c/inp/", "/c/dear/":
			is.Equal(r.State, "no headroom") // says why it gets no call
		case "/c/spare/":
			is.Equal(r.Expected, 1.0)
		}
	}
}

func TestACostPoolPricesEveryRouter(t *testing.T) {
	is := is.New(t)
	pools := costPool()
	pools[0].Routers[2].Price = nil
	err := broker.ValidatePools(pools)
	is.True(err != nil) // refused
	says(t, "the refusal", err.Error(), `pool "/c/": router "/c/dear/" has no price: the cost strategy`)
	_, err = broker.New(broker.Config{Pools: pools, Policy: broker.Policy{DisabledTime: time.Minute}})
	is.True(err != nil) // and so is a broker of it

	// A router has one price: another pool may give it.
	other := broker.Pool{Ingress: "/o/", Routers: []broker.Router{{Path: "/c/dear/", Weight: 1, Price: &broker.Price{Input: 3, CachedInput: 3, Output: 20}}}}
	is.NoErr(broker.ValidatePools(append(pools, other)))
	// Other strategies need no price.
	pools[0].Strategy = "random"
	is.NoErr(broker.ValidatePools(pools))
}

// The explanation names each router's cost per call and the mix it is
// priced at, and its shares are where the calls go.
func TestExplainSaysWhatACallCostsOnEachRouter(t *testing.T) {
	is := is.New(t)
	b, _ := newBroker(t, broker.Config{Pools: costPool()})
	e, ok := b.Explain("/c/", time.Now())
	is.True(ok)
	says(t, "the rule's why", e.Why, "priced at the pool's average call of 750 input, 0 cached input and 250 output tokens (the default, 3 to 1")
	outp := explained(t, e, "/c/outp/")
	is.Equal(outp.Expected, 1.0)
	says(t, "what cost reads", outp.Reads, "0.003 per call (price 2 input, 1 cached input, 6 output per million tokens), weight 1")
	is.Equal(explained(t, e, "/c/inp/").Expected, 0.0)
	is.True(strings.Contains(explained(t, e, "/c/inp/").Why, "prefers others: 0.0043 per call")) // why not

	is.NoErr(b.Used([]byte("/c/inp/"), known(1000, 50, 0)))
	b.Refresh(time.Now())
	e, _ = b.Explain("/c/", time.Now())
	says(t, "the rule's why", e.Why, "average call of 1000 input, 0 cached input and 50 output tokens")
	is.True(!strings.Contains(e.Why, "the default")) // heard
	is.Equal(explained(t, e, "/c/inp/").Expected, 1.0)
	is.Equal(pick(b, "/c/"), "/c/inp/")
}
