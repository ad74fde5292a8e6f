package broker_test

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
)

// usageOf is router's counts in b's Stats.
func usageOf(b *broker.Broker, router string) broker.RouterUsage {
	for _, u := range b.Stats().Usage {
		if u.Router == router {
			return u
		}
	}
	return broker.RouterUsage{}
}

func pricedPools(gpt4 *broker.Price) []broker.Pool {
	return []broker.Pool{{Ingress: "/azure/", Routers: []broker.Router{
		{Path: "/azure/gpt4/", Weight: 1, Price: gpt4},
		{Path: "/azure/mini/", Weight: 1},
	}}}
}

func known(in, out, cached int64) broker.Usage {
	return broker.Usage{State: broker.UsageKnown, Input: in, Output: out, CachedInput: cached}
}

func TestUsedCountsTokensByKindAndSpendAtTheRoutersPrice(t *testing.T) {
	is := is.New(t)
	b, _ := newBroker(t, broker.Config{Pools: pricedPools(&broker.Price{Input: 2.5, Output: 10, CachedInput: 1.25})})
	is.NoErr(b.Used([]byte("/azure/gpt4/"), known(1000, 300, 2000)))
	is.NoErr(b.Used([]byte("/azure/gpt4/"), known(1000, 0, 0)))
	is.NoErr(b.Used([]byte("/azure/gpt4/"), broker.Usage{})) // said nothing of its tokens
	is.NoErr(b.Used([]byte("/azure/mini/"), known(7, 8, 9)))
	is.NoErr(b.Used([]byte("/elsewhere/"), known(1, 2, 3)))

	gpt4 := usageOf(b, "/azure/gpt4/")
	is.Equal(gpt4.UsageCounts, broker.UsageCounts{Input: 2000, Output: 300, CachedInput: 2000, Counted: 2, Unknown: 1,
		Spend: gpt4.Spend}) // tokens by kind, the unknown call counted apart
	is.True(math.Abs(gpt4.Spend-(2000*2.5+300*10+2000*1.25)/1e6) < 1e-15) // tokens × price per million
	is.Equal(*gpt4.Price, broker.Price{Input: 2.5, Output: 10, CachedInput: 1.25})
	mini := usageOf(b, "/azure/mini/")
	is.Equal(mini.Price, nil) // no price given
	is.Equal(mini.Spend, 0.0) // so no spend
	is.Equal(mini.Input, int64(7))
	other := usageOf(b, broker.OtherRouter)
	is.Equal(other.Output, int64(2)) // a path no pool has is "other"
}

// TestACallAboveTheCapOrUnreadableIsRefusedAndNotCounted: a forged
// transaction cannot count 10^15 tokens.
func TestACallAboveTheCapOrUnreadableIsRefusedAndNotCounted(t *testing.T) {
	is := is.New(t)
	b, logs := newBroker(t, broker.Config{Pools: pricedPools(&broker.Price{Input: 1, Output: 1, CachedInput: 1}), MaxCallTokens: 10_000})
	is.NoErr(b.Used([]byte("/azure/gpt4/"), known(1e15, 1, 0)))
	is.NoErr(b.Used([]byte("/azure/gpt4/"), known(5000, 5000, 1))) // one above the cap
	is.NoErr(b.Used([]byte("/azure/gpt4/"), known(5000, 5000, 0))) // at the cap: counted
	is.True(errors.Is(b.Used([]byte("/azure/gpt4/"), broker.Usage{State: broker.UsageUnreadable}), broker.ErrUsageUnreadable))
	is.True(errors.Is(b.Used([]byte("/azure/gpt4/"), known(-1, 5, 0)), broker.ErrUsageUnreadable)) // never negative
	gpt4 := usageOf(b, "/azure/gpt4/")
	is.Equal(gpt4.Capped, uint64(2))
	is.Equal(gpt4.Unreadable, uint64(2))
	is.Equal(gpt4.Input+gpt4.Output+gpt4.CachedInput, int64(10_000)) // only the call at the cap
	is.True(math.Abs(gpt4.Spend-0.01) < 1e-15)
	is.Equal(logs.count("a call's token usage is above the per-call cap: its tokens are not counted"), 1) // once a minute per router
	is.NoErr(b.Used([]byte("/elsewhere/"), known(1e15, 0, 0)))
	is.Equal(logs.count("a call's token usage is above the per-call cap: its tokens are not counted"), 2) // another router says so too
}

func TestTheCallCapIsBounded(t *testing.T) {
	for _, n := range []int64{-1, 999, 1<<40 + 1} {
		_, err := broker.New(broker.Config{Pools: broker.DefaultPools(), Policy: broker.Policy{DisabledTime: time.Minute}, MaxCallTokens: n})
		if err == nil || !strings.Contains(err.Error(), "max call tokens") {
			t.Errorf("max call tokens %d: %v, want refused", n, err)
		}
	}
}

func TestAPriceThatCannotBeOneIsRefusedNamingRouterAndField(t *testing.T) {
	for _, tc := range []struct {
		price broker.Price
		want  string
	}{
		{broker.Price{Input: -1, Output: 10, CachedInput: 1}, `pool "/azure/": router "/azure/gpt4/": price.input -1: a price is 0 or more (per million tokens)`},
		{broker.Price{Input: 1, Output: math.NaN(), CachedInput: 1}, `pool "/azure/": router "/azure/gpt4/": price.output: not a finite number`},
		{broker.Price{Input: 1, Output: 1, CachedInput: math.Inf(1)}, `pool "/azure/": router "/azure/gpt4/": price.cached_input: not a finite number`},
		{broker.Price{Input: 2e6, Output: 1, CachedInput: 1}, `pool "/azure/": router "/azure/gpt4/": price.input 2e+06: more than 1e+06 per million tokens; is it per token, or in the wrong unit?`},
	} {
		err := broker.ValidatePools(pricedPools(&tc.price))
		if err == nil || err.Error() != tc.want {
			t.Errorf("price %+v: %v, want %s", tc.price, err, tc.want)
		}
	}
	// A router has one price wherever it is listed.
	pools := append(pricedPools(&broker.Price{Input: 1, Output: 2, CachedInput: 1}),
		broker.Pool{Ingress: "/openai/", Routers: []broker.Router{{Path: "/azure/gpt4/", Weight: 1, Price: &broker.Price{Input: 1, Output: 3, CachedInput: 1}}}})
	err := broker.ValidatePools(pools)
	is.New(t).Equal(err.Error(), `pool "/openai/": router "/azure/gpt4/": its price differs from the one pool "/azure/" gives it; a router has one price`)
	pools[1].Routers[0].Price = nil
	is.New(t).NoErr(broker.ValidatePools(pools)) // given once, it applies wherever the router is listed
}

func TestReconfigureKeepsTheCountsAndTakesTheNewPriceFromThen(t *testing.T) {
	is := is.New(t)
	b, _ := newBroker(t, broker.Config{Pools: pricedPools(&broker.Price{Input: 1, Output: 1, CachedInput: 1})})
	is.NoErr(b.Used([]byte("/azure/gpt4/"), known(1_000_000, 0, 0)))
	is.NoErr(b.Reconfigure(pricedPools(&broker.Price{Input: 3, Output: 1, CachedInput: 1}), broker.Policy{DisabledTime: time.Hour}, 0))
	is.NoErr(b.Used([]byte("/azure/gpt4/"), known(1_000_000, 0, 0)))
	gpt4 := usageOf(b, "/azure/gpt4/")
	is.Equal(gpt4.Input, int64(2_000_000)) // counted across the change
	is.Equal(gpt4.Spend, 4.0)              // 1 before, 3 after
	is.NoErr(b.Reconfigure(pricedPools(nil), broker.Policy{DisabledTime: time.Hour}, 0))
	is.Equal(usageOf(b, "/azure/gpt4/").Price, nil) // the price taken away
}

func TestUsedCostsNoAllocation(t *testing.T) {
	b, _ := newBroker(t, broker.Config{Pools: pricedPools(&broker.Price{Input: 1, Output: 1, CachedInput: 1})})
	router := []byte("/azure/gpt4/")
	if n := testing.AllocsPerRun(100, func() { _ = b.Used(router, known(10, 10, 10)) }); n != 0 {
		t.Errorf("%v allocations per call, want 0", n)
	}
}
