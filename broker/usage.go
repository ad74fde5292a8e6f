package broker

// Tokens and spend: what each call used, as its upstream said in
// gecholog's transaction log, and what it cost at its router's price.

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync/atomic"
	"time"
)

// Price is what a router's upstream charges, in any one currency, per
// million tokens of each kind.
type Price struct {
	Input, Output float64
	// CachedInput is the price of input tokens the upstream read from its
	// prompt cache; a pools file that leaves it out means Input.
	CachedInput float64
}

// Cost is what u costs at p, in p's currency.
func (p Price) Cost(u Usage) float64 {
	return (float64(u.Input)*p.Input + float64(u.Output)*p.Output + float64(u.CachedInput)*p.CachedInput) / 1e6
}

// validate says what is wrong with p, naming the field as the pools file
// does; nil when nothing is.
func (p Price) validate() error {
	for _, f := range []struct {
		name string
		v    float64
	}{{"input", p.Input}, {"output", p.Output}, {"cached_input", p.CachedInput}} {
		switch {
		case math.IsNaN(f.v) || math.IsInf(f.v, 0):
			return fmt.Errorf("price.%s: not a finite number", f.name)
		case f.v < 0:
			return fmt.Errorf("price.%s %v: a price is 0 or more (per million tokens)", f.name, f.v)
		case f.v > MaxPrice:
			return fmt.Errorf("price.%s %v: more than %v per million tokens; is it per token, or in the wrong unit?", f.name, f.v, MaxPrice)
		}
	}
	return nil
}

// MaxPrice bounds a price per million tokens: no model costs a million
// of any currency per million tokens, and a bound keeps a typo from
// making the spend counter meaningless.
const MaxPrice = 1e6

// UsageState says what a call's answer said of its tokens.
type UsageState uint8

const (
	// UsageUnknown: the answer says nothing of its tokens (no usage, or
	// a streamed answer whose client did not ask for it).
	UsageUnknown UsageState = iota
	// UsageKnown: the counts of Usage are the answer's.
	UsageKnown
	// UsageUnreadable: the answer says a count that cannot be a number
	// of tokens (negative, fractional, not a number, beyond MaxTokens).
	UsageUnreadable
)

// MaxTokens bounds each count read from an answer, so that sums of them
// never overflow; a count beyond it is unreadable. The per-call cap
// (Config.MaxCallTokens) is far lower.
const MaxTokens = 1 << 53

// Usage is the tokens one call used, as its upstream's answer said.
type Usage struct {
	State UsageState
	// Input counts the prompt's tokens the upstream did not read from its
	// cache (those it wrote to the cache included), CachedInput those it
	// did, and Output the answer's.
	Input, Output, CachedInput int64
}

// Total is every token of u.
func (u Usage) Total() int64 { return u.Input + u.Output + u.CachedInput }

// DefaultMaxCallTokens is the most tokens one call counts with: beyond the
// largest context window and answer of any model, far below what one
// forged transaction could claim.
const DefaultMaxCallTokens = 2_000_000

// MaxCallTokensRange is the per-call caps New accepts.
var MaxCallTokensRange = Range[int64]{Min: 1000, Max: 1 << 40}

// ErrUsageUnreadable is a call whose answer says a token count that
// cannot be one; its tokens are not counted.
var ErrUsageUnreadable = errors.New("ignored: the upstream's token usage cannot be read (a count negative, fractional, not a number, or beyond 2^53)")

// The reasons a call's usage is refused, as broker_usage_refused_total
// names them.
const (
	RefusedUnreadable = "unreadable"
	RefusedCapped     = "capped"
)

// cappedTellEvery is how often, at most, a router's calls above the cap
// are logged.
const cappedTellEvery = time.Minute

// usageCounts are one router's tokens and spend since the replica
// started. Every replica hears every call of the fleet on gecholog's
// transaction log, so each replica's counts are already the fleet's
// totals: nothing is added up across replicas.
type usageCounts struct {
	input, output, cached atomic.Int64
	spend                 atomic.Uint64 // float64 bits
	counted               atomic.Uint64 // calls whose tokens were counted
	unknown               atomic.Uint64 // calls whose tokens were not said
	unreadable, capped    atomic.Uint64 // calls refused
	cappedTold            atomic.Int64  // unix nanoseconds of the last line about a call above the cap
}

func (c *usageCounts) addSpend(x float64) {
	for {
		old := c.spend.Load()
		if c.spend.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+x)) {
			return
		}
	}
}

// UsageCounts are a router's tokens and spend since the replica started,
// over the whole fleet.
type UsageCounts struct {
	Input, Output, CachedInput int64
	// Spend is what the tokens cost at the router's price when each call
	// was heard, in the price's currency.
	Spend float64
	// Counted counts the calls whose tokens were counted.
	Counted uint64
	// Unknown counts calls whose answer did not say its tokens;
	// Unreadable and Capped the calls refused (RefusedUnreadable,
	// RefusedCapped), whose tokens are not counted.
	Unknown, Unreadable, Capped uint64
}

func (c *usageCounts) snapshot() UsageCounts {
	return UsageCounts{Input: c.input.Load(), Output: c.output.Load(), CachedInput: c.cached.Load(),
		Spend: math.Float64frombits(c.spend.Load()), Counted: c.counted.Load(), Unknown: c.unknown.Load(), Unreadable: c.unreadable.Load(), Capped: c.capped.Load()}
}

// RouterUsage is one router's UsageCounts in Stats.
type RouterUsage struct {
	Router string // OtherRouter for every path no pool has
	// Price is the router's price now; nil when the pools give none.
	Price *Price
	UsageCounts
}

// Used counts the tokens a call to router used, as its answer in
// gecholog's transaction log said, and what they cost at the router's
// price. A path no pool has counts as OtherRouter. A call above the
// per-call cap is not counted and is logged, at most once a minute per
// router; an unreadable one gives ErrUsageUnreadable.
func (b *Broker) Used(router []byte, u Usage) error { return b.UsedIn(nil, router, u) }

// UsedIn is Used for a call made through ingress, the ingress router the
// client called (request.original_gl_path; nil: not said): the call
// counts against the budget of ingress's pool too, at router's price.
func (b *Broker) UsedIn(ingress, router []byte, u Usage) error {
	defer b.stir() // a budget counted further: Refresh checks it
	rt := b.cur().routers[string(router)]
	// Every call counts against a budget's requests, its tokens only when
	// they are counted here.
	counted, tokens, spend, err := b.tally(rt, u)
	now := time.Now()
	if rt != nil {
		b.countBudget(rt, now, tokens, spend)
	}
	b.countPoolBudget(ingress, now, counted, u, tokens, spend)
	return err
}

// tally counts u in rt's counts (nil: OtherRouter's): counted says its
// tokens were, and what they cost at rt's price.
func (b *Broker) tally(rt *route, u Usage) (counted bool, tokens int64, spend float64, err error) {
	c := &b.otherUse
	var price *Price
	if rt != nil {
		c, price = &rt.stats.use, rt.price.Load()
	}
	switch u.State {
	case UsageUnknown:
		c.unknown.Add(1)
		return false, 0, 0, nil
	case UsageUnreadable:
		c.unreadable.Add(1)
		return false, 0, 0, ErrUsageUnreadable
	}
	if u.Input < 0 || u.Output < 0 || u.CachedInput < 0 || u.Input > MaxTokens || u.Output > MaxTokens || u.CachedInput > MaxTokens {
		c.unreadable.Add(1)
		return false, 0, 0, ErrUsageUnreadable
	}
	if total := u.Total(); total > b.maxCallTokens {
		c.capped.Add(1)
		now := time.Now().UnixNano()
		if told := c.cappedTold.Load(); (told == 0 || now-told >= int64(cappedTellEvery)) && c.cappedTold.CompareAndSwap(told, now) {
			name := OtherRouter
			if rt != nil {
				name = rt.path
			}
			b.log.Warn("a call's token usage is above the per-call cap: its tokens are not counted", slog.String("router", name),
				slog.Int64("tokens", total), slog.Int64("max_call_tokens", b.maxCallTokens), slog.Uint64("capped_calls_total", c.capped.Load()),
				slog.String("hint", "a forged or broken transaction; if such calls are real, raise BROKER_MAX_CALL_TOKENS"))
		}
		return false, 0, 0, nil
	}
	if price != nil {
		spend = price.Cost(u)
	}
	c.count(u, spend)
	return true, u.Total(), spend, nil
}

// count adds a call of u that cost spend.
func (c *usageCounts) count(u Usage, spend float64) {
	c.input.Add(u.Input)
	c.output.Add(u.Output)
	c.cached.Add(u.CachedInput)
	c.counted.Add(1)
	if spend != 0 {
		c.addSpend(spend)
	}
}

// usage lists the tokens and spend of every router of the pools in force,
// in the order they first appear, then OtherRouter's.
func (b *Broker) usage() []RouterUsage {
	t := b.cur()
	out := make([]RouterUsage, 0, len(t.members)+1)
	for _, rt := range t.members {
		out = append(out, RouterUsage{Router: rt.path, Price: rt.price.Load(), UsageCounts: rt.stats.use.snapshot()})
	}
	return append(out, RouterUsage{Router: OtherRouter, UsageCounts: b.otherUse.snapshot()})
}
