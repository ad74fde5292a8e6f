package replica

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/safetext"
)

// Explained is what a replica's listener answers at
// /explain?ingress=PATH: why the pool's calls go where they go, from the
// replica's own view (broker.Explain), as JSON. `broker explain` prints
// it. Its JSON names are an interface: add fields, never rename them. A
// null number is one not known. Texts are safe to show (safetext).
type Explained struct {
	// Error says what is wrong with the question, and Pools then lists the
	// ingresses there are; both empty on an answer.
	Error string   `json:"error,omitempty"`
	Pools []string `json:"pools,omitempty"`

	Replica string    `json:"replica"`
	At      time.Time `json:"at"`
	// Config is the fleet's configuration the replica runs by; null while
	// it has not read it.
	Config   *ExplainedConfig `json:"config"`
	Ingress  string           `json:"ingress"`
	Strategy string           `json:"strategy"`
	// AllDisabled is the mode that answers when no router is enabled.
	AllDisabled string `json:"all_disabled"`
	// Rule is what answers the calls now (broker.Rule), Tier the priority
	// of the routers taking them (null: the all-disabled rule answers),
	// and Why says why in one line.
	Rule    string            `json:"rule"`
	Tier    *int              `json:"tier"`
	Why     string            `json:"why"`
	Routers []ExplainedRouter `json:"routers"`
	// Affinity is the pool's session affinity; null when it has none.
	// Rule, Why and the routers' shares are then for the calls without a
	// key: a keyed call goes to its session's router.
	Affinity *ExplainedAffinity `json:"affinity"`
	// Session says where the session asked for goes (?session=VALUE);
	// absent when none was asked for.
	Session *ExplainedSession `json:"session,omitempty"`
}

// ExplainedConfig is the revision a replica runs by (see ConfigState).
type ExplainedConfig struct {
	Revision uint64 `json:"revision"`
	Refused  string `json:"refused,omitempty"`
	Note     string `json:"note,omitempty"`
}

// ExplainedRouter is one router of Explained (broker.RouterExplanation).
type ExplainedRouter struct {
	Router string `json:"router"`
	Tier   int    `json:"tier"`
	Weight int    `json:"weight"`
	// State is "enabled", "disabled", "probation", "manual", "standby",
	// "no headroom" or "budget" (out until its spent budget's period
	// resets), and Why says why in one line; Until is when it ends by
	// itself (null: it does not).
	State string     `json:"state"`
	Why   string     `json:"why"`
	Until *time.Time `json:"until"`
	// The record that keeps it out, when one does.
	Reason string `json:"reason,omitempty"`
	By     string `json:"by,omitempty"`
	Status *int   `json:"status"`
	Probe  string `json:"probe,omitempty"`
	// Reads is what the strategy reads of it, in words, and the figures:
	// its calls in flight over the fleet, its latency, the share of its
	// rate limit left for the next call, and when it has requests or
	// tokens again.
	Reads            string     `json:"reads"`
	InFlight         int64      `json:"in_flight"`
	LatencyMS        *float64   `json:"latency_ms"`
	Headroom         *float64   `json:"headroom"`
	RateLimitedUntil *time.Time `json:"rate_limited_until"`
	// Share is the share of the pool's calls it gets now, 0 to 1 (null
	// when the strategy does not say), and RecentShare its share of the
	// fleet's recent choices.
	Share       *float64 `json:"share"`
	RecentShare float64  `json:"recent_share"`
	// Tokens are its calls' tokens over the whole fleet since the replica
	// started (every replica hears every call), Spend what they cost at
	// its price (null: it has none), and UsageUnknown its calls whose
	// answer did not say their tokens.
	Tokens       ExplainedTokens `json:"tokens"`
	Spend        *float64        `json:"spend"`
	UsageUnknown uint64          `json:"usage_unknown"`
	// CostPerCall is what one call to it is expected to cost at its
	// price and the pool's average call, as the cost strategy reads it
	// (null: it has no price).
	CostPerCall *float64 `json:"cost_per_call"`
}

// ExplainedTokens are a router's tokens by kind.
type ExplainedTokens struct {
	Input       int64 `json:"input"`
	Output      int64 `json:"output"`
	CachedInput int64 `json:"cached_input"`
}

// explained turns the core's explanation into the answer.
func explained(e broker.Explanation) Explained {
	x := Explained{Ingress: e.Ingress, Strategy: e.Strategy, AllDisabled: string(e.AllDisabled), Rule: string(e.Rule),
		Why: safetext.Line(e.Why), Routers: []ExplainedRouter{}}
	if e.Tier >= 0 {
		x.Tier = &e.Tier
	}
	when := func(t time.Time) *time.Time {
		if t.IsZero() {
			return nil
		}
		t = t.UTC()
		return &t
	}
	for _, r := range e.Routers {
		o := ExplainedRouter{Router: r.Router, Tier: r.Priority, Weight: r.Weight, State: r.State, Why: safetext.Line(r.Why),
			Until: when(r.Until), Probe: safetext.Clip(r.Probe, safetext.MaxShown), Reads: r.Reads, InFlight: r.InFlight,
			RateLimitedUntil: when(r.RateLimitedUntil), RecentShare: r.Share, UsageUnknown: r.Usage.Unknown,
			Tokens: ExplainedTokens{Input: r.Usage.Input, Output: r.Usage.Output, CachedInput: r.Usage.CachedInput}}
		if r.Price != nil || r.Usage.Spend != 0 {
			spend := r.Usage.Spend
			o.Spend = &spend
		}
		if r.Price != nil {
			c := r.CallCost
			o.CostPerCall = &c
		}
		if rec := r.Record; rec != nil {
			o.Reason, o.By = safetext.Clip(rec.Reason, safetext.MaxShown), safetext.Clip(rec.By, safetext.MaxShown)
			if rec.Status != 0 {
				o.Status = &rec.Status
			}
		}
		if r.LatencyKnown {
			ms := float64(r.Latency) / float64(time.Millisecond)
			o.LatencyMS = &ms
		}
		if r.HeadroomKnown {
			o.Headroom = &r.Room
		}
		if r.ExpectedKnown {
			o.Share = &r.Expected
		}
		x.Routers = append(x.Routers, o)
	}
	return x
}

// explain answers /explain?ingress=PATH. It changes nothing.
func (m *monitor) explain(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	b := m.broker.Load()
	answer := func(code int, x Explained) {
		x.Replica, x.At = m.id, now.UTC()
		if conf := m.conf.Load(); conf != nil {
			c := (*conf)()
			x.Config = &ExplainedConfig{Revision: c.Revision, Refused: safetext.Line(c.Refused), Note: safetext.Line(c.Note)}
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(x)
	}
	if b == nil {
		answer(http.StatusServiceUnavailable, Explained{Error: "the replica knows no pools yet: " + m.notReady()})
		return
	}
	ingress := r.URL.Query().Get("ingress")
	pools := b.Ingresses()
	switch {
	case ingress == "":
		answer(http.StatusBadRequest, Explained{Error: "give the pool's ingress, as in /explain?ingress=/azure/", Pools: pools})
		return
	case !broker.ValidPath(ingress):
		// Not echoed: it may hold anything.
		answer(http.StatusBadRequest, Explained{Error: "the ingress is no router path: it starts and ends with / and holds only letters, digits and /", Pools: pools})
		return
	}
	e, ok := b.Explain(ingress, now)
	if !ok {
		answer(http.StatusNotFound, Explained{Error: "no pool has ingress " + ingress, Pools: pools})
		return
	}
	x := explained(e)
	if h := m.handler.Load(); h != nil {
		x.Affinity = explainedAffinity(e.Affinity, h.SessionHeaderName())
		if q := r.URL.Query(); q.Has("session") {
			x.Session = explainSession(b, ingress, q.Get("session"), h.SessionHeaderName())
		}
	}
	answer(http.StatusOK, x)
}
