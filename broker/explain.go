package broker

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Ingresses returns the pools' ingresses in the configured order.
func (b *Broker) Ingresses() []string { return slices.Clone(b.cur().order) }

// Explain says why the calls for ingress go where they go, as this replica
// sees it at now; false when no pool has that ingress.
func (b *Broker) Explain(ingress string, now time.Time) (Explanation, bool) {
	p, ok := b.PoolView(ingress, now)
	if !ok {
		return Explanation{}, false
	}
	return Explain(p, now), true
}

// Explanation says why a pool's calls go where they go: which rule
// answers them (the strategy on one tier, or the all-disabled rule) and
// why, and for each router its state and why, what the strategy reads of
// it and the share of the calls it gets. It answers "why does gpt4 get no
// calls?" in one look; `broker explain` prints it.
type Explanation struct {
	Ingress     string
	Strategy    string
	AllDisabled AllDisabled
	// Rule is what answers the pool's calls now.
	Rule Rule
	// Tier is the priority of the routers that take the calls while Rule
	// is ByStrategy or EveryTierDeclined; -1 otherwise.
	Tier int
	// Why says in one line why Rule answers, and on which tier.
	Why string
	// Routers are the pool's routers in its order.
	Routers []RouterExplanation
	// Affinity is the pool's: when it is on, a keyed call goes to its
	// session's router, and Rule, Why and each router's share say what
	// becomes of the calls without a key.
	Affinity Affinity
}

// Rule is what answers a pool's calls.
type Rule string

const (
	// ByStrategy: the pool's strategy chooses among the enabled routers
	// of the best tier it finds one in that can take the call.
	ByStrategy Rule = "strategy"
	// EveryTierDeclined: routers are enabled, but the strategy found none
	// that can take a call (none has headroom left); calls go to the best
	// tier at random by weight, as a call that may work beats none.
	EveryTierDeclined Rule = "every tier declined"
	// PanicRule, AnyRule and IngressRule: no router is enabled, and the
	// all-disabled mode of that name answers.
	PanicRule   Rule = "all disabled: panic"
	AnyRule     Rule = "all disabled: any"
	IngressRule Rule = "all disabled: ingress"
	// ByHand: every router is disabled by hand; calls stay on the
	// ingress router's own outbound whatever the all-disabled mode.
	ByHand Rule = "all disabled by hand"
	// SpentIngressRule and SpentSoonestRule: no router takes calls, and
	// those that are healthy are out for their budget: the pool's
	// BudgetSpent rule answers.
	SpentIngressRule Rule = "budget spent: ingress"
	SpentSoonestRule Rule = "budget spent: soonest"
	// PoolSpentRule: the pool's own budget is spent; no router takes its
	// calls, which stay on the ingress router's own outbound whatever
	// BudgetSpent says.
	PoolSpentRule Rule = "pool budget spent"
)

// RouterExplanation is one router of an Explanation: the view it is
// explained from, and the explanation.
type RouterExplanation struct {
	RouterView
	// State is where the router stands for the pool's calls: its phase
	// ("enabled", "disabled", "probation", "manual"), or for an enabled
	// router that gets no share, "standby" (a better tier takes the
	// calls) or "no headroom" (its upstream said none is left).
	State string
	// Why says in one line why the router is in State and gets Expected.
	Why string
	// Until is when State ends by itself: the disable's end, or the
	// rate-limit reset of a router without headroom; zero when it does
	// not end by itself.
	Until time.Time
	// Reads is what the pool's strategy reads of the router, in words;
	// "" when it does not ask about the router.
	Reads string
	// Expected is the share of the pool's calls the router gets now, from
	// 0 to 1, by the rule that answers them and the statistics as they
	// are: the shares of a pool add up to 1, or to 0 when calls stay on
	// the ingress. ExpectedKnown is false when the strategy does not say
	// (it does not implement Sharer).
	Expected      float64
	ExpectedKnown bool
}

// A Sharer is a Strategy that says what share of a tier's calls each of
// its routers gets: the expected result of Pick, over many calls, with the
// statistics as they are. Shares is given the tier's routers as
// RouterView (Weight, InFlight, Latency, Room, CallCost: what Pick reads
// through Tier) and sets share[i] for each, adding up to 1; it returns false when
// Pick would decline the tier (return -1). It is for operators (Explain),
// not the request's path. A strategy that does not implement it works:
// its shares are shown as not known.
type Sharer interface {
	Shares(t []RouterView, share []float64) bool
}

// Explain says why the pool's calls go where they go at now, from p alone:
// the rule Choose follows (see Strategy), applied to what p says.
func Explain(p PoolView, now time.Time) Explanation {
	e := Explanation{Ingress: p.Ingress, Strategy: p.Strategy, AllDisabled: p.AllDisabled, Tier: -1, Affinity: p.Affinity}
	for _, v := range p.Routers {
		e.Routers = append(e.Routers, RouterExplanation{RouterView: v, State: v.Phase.String(), ExpectedKnown: true})
	}
	s := strategies[p.Strategy].Strategy
	sharer, canShare := s.(Sharer)
	// The enabled routers by tier, best first, as Choose's snapshot has
	// them.
	var tiers []int
	for _, v := range p.Routers {
		if v.takesCalls() && !slices.Contains(tiers, v.Priority) {
			tiers = append(tiers, v.Priority)
		}
	}
	slices.Sort(tiers)
	members := func(tier int) (idx []int, views []RouterView) {
		for i, v := range p.Routers {
			if v.takesCalls() && v.Priority == tier {
				idx, views = append(idx, i), append(views, v)
			}
		}
		return idx, views
	}
	var declined []int // tiers the strategy declined, best first
	switch {
	case len(tiers) > 0:
		e.Rule = EveryTierDeclined
		for _, tier := range tiers {
			idx, views := members(tier)
			share := make([]float64, len(views))
			ok := true
			if canShare {
				ok = sharer.Shares(views, share)
			}
			if !ok {
				declined = append(declined, tier)
				continue
			}
			e.Rule, e.Tier = ByStrategy, tier
			for k, i := range idx {
				e.Routers[i].Expected, e.Routers[i].ExpectedKnown = share[k], canShare
			}
			break
		}
		if e.Rule == EveryTierDeclined {
			e.Tier = tiers[0]
			idx, views := members(tiers[0])
			share := make([]float64, len(views))
			byWeight(views, share)
			for k, i := range idx {
				e.Routers[i].Expected = share[k]
			}
		}
	case slices.ContainsFunc(p.Routers, RouterView.spent):
		e.budgetSpent(p)
	default:
		e.allDisabled(p)
	}
	if !p.BudgetUntil.IsZero() {
		e.poolSpent()
	}
	e.why(p, tiers, declined, now)
	return e
}

// allDisabled sets the rule and shares of a pool with no router enabled,
// as Choose's snapshot falls back.
func (e *Explanation) allDisabled(p PoolView) {
	var fallback []int // every router not disabled by hand
	soonest := -1
	for i, v := range p.Routers {
		if v.Phase == Manual {
			continue
		}
		fallback = append(fallback, i)
		// Every router here has a live record: it is not enabled.
		if soonest < 0 || v.Record.Until.Before(p.Routers[soonest].Record.Until) {
			soonest = i
		}
	}
	switch {
	case p.AllDisabled == Ingress:
		e.Rule = IngressRule
	case len(fallback) == 0:
		e.Rule = ByHand
	case p.AllDisabled == Any:
		e.Rule = AnyRule
		views := make([]RouterView, len(fallback))
		for k, i := range fallback {
			views[k] = p.Routers[i]
		}
		share := make([]float64, len(views))
		byWeight(views, share)
		for k, i := range fallback {
			e.Routers[i].Expected = share[k]
		}
	default:
		e.Rule = PanicRule
		e.Routers[soonest].Expected = 1
	}
}

// why fills in the words: the rule's, and each router's.
func (e *Explanation) why(p PoolView, tiers, declined []int, now time.Time) {
	out := func(tier int) string { // the routers of tier that are out, and how
		var s []string
		for _, r := range e.Routers {
			if r.Priority == tier && r.Phase != Enabled {
				s = append(s, r.Router+" "+r.State)
			}
		}
		return strings.Join(s, ", ")
	}
	switch e.Rule {
	case ByStrategy:
		var better []string // why each better tier takes no call
		var seen []int
		for _, r := range e.Routers {
			if r.Priority < e.Tier && !slices.Contains(seen, r.Priority) {
				seen = append(seen, r.Priority)
			}
		}
		slices.Sort(seen)
		for _, t := range seen {
			if slices.Contains(declined, t) {
				better = append(better, fmt.Sprintf("tier %d's routers have no headroom left", t))
			} else {
				better = append(better, fmt.Sprintf("tier %d is out (%s)", t, out(t)))
			}
		}
		e.Why = fmt.Sprintf("tier %d takes the calls, chosen by the %s strategy", e.Tier, e.Strategy)
		if len(better) == 0 {
			e.Why += ": it is the best tier, and has an enabled router"
		} else {
			e.Why += ": " + strings.Join(better, "; ")
		}
		if strategies[e.Strategy].NeedsPrices {
			e.Why += "; " + mixWords(p)
		}
	case EveryTierDeclined:
		e.Why = fmt.Sprintf("no enabled router has headroom left, so the %s strategy declines every tier; calls go to tier %d at random by weight (panic), as a call that may work beats none", e.Strategy, e.Tier)
	case PanicRule:
		for _, r := range e.Routers {
			if r.Expected == 1 {
				e.Why = "every router is out; all-disabled mode panic sends the calls to " + r.Router + ", whose disable ends soonest"
			}
		}
	case AnyRule:
		e.Why = "every router is out; all-disabled mode any chooses among all but those disabled by hand, by weight"
	case IngressRule:
		e.Why = "every router is out; all-disabled mode ingress leaves the calls on the ingress router's own outbound"
	case ByHand:
		e.Why = "every router is disabled by hand; the calls stay on the ingress router's own outbound"
	case SpentIngressRule:
		e.Why = "every router that is not disabled is out for its budget; budget_spent ingress leaves the calls on the ingress router's own outbound until a budget resets"
	case SpentSoonestRule:
		e.Why = "every router that is not disabled is out for its budget; budget_spent soonest sends the calls to the one whose budget resets first"
	case PoolSpentRule:
		e.Why = "the pool is out for its own budget: " + p.BudgetWhy + "; its calls stay on the ingress router's own outbound until then, whatever budget_spent says"
	}
	for i := range e.Routers {
		r := &e.Routers[i]
		r.Reads = reads(p.Strategy, r.RouterView)
		switch r.Phase {
		case Manual:
			r.Why = "disabled by hand by " + quoted(r.Record.By)
			if r.Record.Until.IsZero() {
				r.Why += " until enabled by hand"
			} else {
				r.Until = r.Record.Until
				r.Why += " until " + at(r.Until, now)
			}
			r.Why += ": " + quoted(r.Record.Reason)
			r.Reads = ""
		case Disabled:
			r.Until = r.Record.Until
			r.Why = "disabled until " + at(r.Until, now) + " by " + quoted(r.Record.By) + ": " + quoted(r.Record.Reason)
			if r.Record.Level > 0 {
				r.Why += fmt.Sprintf(" (backoff level %d)", r.Record.Level)
			}
			if r.Provisional {
				r.Why += "; announced by that replica, not in the bucket yet"
			}
			if r.Stored != nil {
				r.Why += "; the bucket's record reaches further, held to the failure policy's longest disable"
			}
			if !r.RateLimitedUntil.IsZero() {
				r.Why += "; its upstream also said no request or token is left until " + at(r.RateLimitedUntil, now)
			}
			r.Reads = ""
		case Probation:
			r.Why = "on probation: its disable ended " + at(r.Record.Until, now) + ", and one probe call decides; "
			switch {
			case r.Probe == p.Replica && r.Probe != "":
				r.Why += "this replica holds it (" + quoted(r.Probe) + "), and sends it the next call"
			case r.Probe != "":
				r.Why += "replica " + quoted(r.Probe) + " holds it"
			default:
				r.Why += "nobody holds it yet: the next call for the pool claims it"
			}
			r.Reads = ""
		case Enabled:
			if r.spent() {
				r.State, r.Why, r.Until, r.Reads = "budget", "out for its budget: "+r.BudgetWhy, r.BudgetUntil, ""
				if e.Rule == SpentSoonestRule && r.Expected > 0 {
					r.Why += "; budget_spent soonest sends it calls"
				}
				continue
			}
			r.explainEnabled(e, tiers, declined, now)
		}
		if (e.Rule == PanicRule || e.Rule == AnyRule) && r.Expected > 0 {
			r.Why += "; " + string(e.Rule) + " sends it calls"
		}
	}
}

// explainEnabled says why an enabled router gets the share it gets.
func (r *RouterExplanation) explainEnabled(e *Explanation, tiers, declined []int, now time.Time) {
	noRoom := r.HeadroomKnown && r.Room <= 0 && (e.Strategy == "headroom" || e.Strategy == "cost")
	switch {
	case slices.Contains(declined, r.Priority):
		r.State = "no headroom"
		r.Why = fmt.Sprintf("enabled, but no router of tier %d has headroom left", r.Priority)
		if e.Rule == EveryTierDeclined && r.Priority == e.Tier {
			r.Why += "; calls go to this tier at random by weight (panic)"
		}
	case e.Rule == ByStrategy && r.Priority > e.Tier:
		r.State = "standby"
		r.Why = fmt.Sprintf("enabled, standby: tier %d takes calls only when tier %d cannot", r.Priority, e.Tier)
		return
	case noRoom:
		r.State = "no headroom"
		r.Why = "enabled, but its upstream said no request or token is left"
	case !r.ExpectedKnown:
		r.Why = fmt.Sprintf("enabled, in tier %d, which takes the calls; the %s strategy does not say its shares", r.Priority, e.Strategy)
	case r.Expected == 0:
		r.Why = fmt.Sprintf("enabled, in tier %d, which takes the calls; the %s strategy prefers others: %s", r.Priority, e.Strategy, r.Reads)
	default:
		r.Why = fmt.Sprintf("enabled, in tier %d, which takes the calls; the %s strategy reads %s", r.Priority, e.Strategy, r.Reads)
	}
	if !r.RateLimitedUntil.IsZero() {
		if r.State == "no headroom" {
			r.Until = r.RateLimitedUntil
		}
		r.Why += ", until " + at(r.RateLimitedUntil, now) + " (its rate-limit reset)"
		if e.Strategy != "headroom" && e.Strategy != "cost" {
			r.Why += fmt.Sprintf("; the %s strategy does not read headroom, so it still gets calls", e.Strategy)
		}
	}
}

// reads is what strategy reads of v, in words.
func reads(strategy string, v RouterView) string {
	switch strategy {
	case "random":
		return fmt.Sprintf("weight %d", v.Weight)
	case "least-busy":
		return fmt.Sprintf("%d in flight over the fleet, weight %d", v.InFlight, v.Weight)
	case SessionsStrategy:
		s := fmt.Sprintf("%d sessions pinned, %d in flight over the fleet, weight %d", v.Sessions, v.InFlight, v.Weight)
		if v.HeadroomKnown {
			s += fmt.Sprintf(", headroom %.0f%%", 100*v.Room)
		}
		return s
	case "latency":
		if !v.LatencyKnown {
			return fmt.Sprintf("latency not heard of yet, %d in flight, weight %d", v.InFlight, v.Weight)
		}
		return fmt.Sprintf("latency %v, weight %d", v.Latency.Round(time.Millisecond/10), v.Weight)
	case "headroom":
		if !v.HeadroomKnown {
			return fmt.Sprintf("headroom not said (full), weight %d", v.Weight)
		}
		return fmt.Sprintf("headroom %.0f%%, weight %d", 100*v.Room, v.Weight)
	case "cost":
		if v.Price == nil {
			return fmt.Sprintf("no price, weight %d", v.Weight)
		}
		s := fmt.Sprintf("%s per call (price %s input, %s cached input, %s output per million tokens)",
			money(v.CallCost), money(v.Price.Input), money(v.Price.CachedInput), money(v.Price.Output))
		if v.HeadroomKnown {
			s += fmt.Sprintf(", headroom %.0f%%", 100*v.Room)
		}
		return s + fmt.Sprintf(", weight %d", v.Weight)
	}
	return ""
}

// money is an amount in a price's currency, to 4 significant digits.
func money(x float64) string { return strconv.FormatFloat(x, 'g', 4, 64) }

// mixWords says by which average call p's routers are priced.
func mixWords(p PoolView) string {
	m := p.Mix
	s := fmt.Sprintf("each router priced at the pool's average call of %.0f input, %.0f cached input and %.0f output tokens", m.Input, m.CachedInput, m.Output)
	if !p.MixHeard {
		s += " (the default, 3 to 1, until a call of the pool's routers is heard with its tokens)"
	}
	return s
}

// at is t for a reader: the time, and how far off it is.
func at(t time.Time, now time.Time) string {
	d := t.Sub(now).Round(time.Second)
	switch {
	case d > 0:
		return fmt.Sprintf("%s (in %v)", t.UTC().Format(time.RFC3339), d)
	case d < 0:
		return fmt.Sprintf("%s (%v ago)", t.UTC().Format(time.RFC3339), -d)
	}
	return t.UTC().Format(time.RFC3339) + " (now)"
}

// quoted is s, clipped, and quoted as Go would when it holds anything
// but printable characters: text from the bucket, where anyone may write,
// so that it neither ends the line nor runs on.
func quoted(s string) string {
	s = clip(s)
	if q := strconv.Quote(s); q[1:len(q)-1] != s {
		return q
	}
	return s
}

// byWeight sets share to each router's weight over the tier's: the
// share Tier.Random gives.
func byWeight(t []RouterView, share []float64) {
	var total int
	for _, v := range t {
		total += v.Weight
	}
	for i, v := range t {
		share[i] = float64(v.Weight) / float64(total)
	}
}
