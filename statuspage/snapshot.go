package statuspage

import (
	"time"

	"github.com/gecholog/broker/broker"
)

// Snapshot is what the page shows at one moment, as the JSON that
// /status.json answers and /events streams. Its JSON names are the page's
// interface: add fields, never rename them. A null number means "not
// known", and the page shows "—" for it. Its texts are shown as they are
// to be read: control, bidirectional and format characters escaped (as
// \u202e), and each cut to safetext.MaxShown characters.
type Snapshot struct {
	// Replica names the replica that answered; "" until it has connected.
	Replica string `json:"replica"`
	// At is the replica's clock when the snapshot was taken; the page
	// counts down from it, so a browser whose clock is off still shows
	// the right time left.
	At   time.Time `json:"at"`
	NATS NATS      `json:"nats"`
	// Mode is how disables are kept: "ttl" or "expiry" (shared through
	// the bucket) or "local" (this replica's own); "" until decided.
	Mode string `json:"mode"`
	// NotReady says why the replica does not take calls; "" when it does.
	NotReady string `json:"not_ready"`
	// Stale says why the replica's view may be stale: its bucket does
	// not answer; "" when it does.
	Stale string `json:"stale"`
	// Config is the revision of the fleet's configuration the replica
	// runs by, and what it refused.
	Config Config `json:"config"`
	// Fleet is every replica's revision as this one hears it, and which
	// are out of step.
	Fleet Fleet `json:"fleet"`
	// Pools are every pool in the configured order, each router in the
	// pool's order; null while the replica has not connected and so does
	// not know them yet.
	Pools []Pool `json:"pools"`
	// UnknownRouters are routers no pool has that the bucket held records
	// for since the replica started: replicas ignore those records.
	UnknownRouters []string `json:"unknown_routers"`
	// UnknownMore counts the routers no pool has beyond the first 20,
	// which UnknownRouters names.
	UnknownMore int `json:"unknown_more"`
	// Choices says over what the share of choices is counted.
	Choices Window `json:"choices"`
	// Notes say, in words, what the page does not know and why.
	Notes []string `json:"notes"`
}

// NATS is the replica's connection, without credentials.
type NATS struct {
	Connected bool `json:"connected"`
	// Server is the server connected to, credentials redacted; "" while
	// not connected.
	Server string `json:"server"`
}

// Window is the span the share of choices is counted over.
type Window struct {
	// Seconds is its length; 0 when counted since the replica started.
	Seconds float64 `json:"seconds"`
	// Scope says whose choices are counted: "this replica" until the
	// replicas share their counts.
	Scope string `json:"scope"`
}

// Pool is one pool and its routers.
type Pool struct {
	Ingress string   `json:"ingress"`
	Routers []Router `json:"routers"`
	// Affinity is the pool's session affinity; null when it has none.
	Affinity *Affinity `json:"affinity"`
}

// Router is one router of one pool, as the replica acts on it.
type Router struct {
	Router string `json:"router"`
	// State is "enabled", "disabled", "probation" (the disable has ended
	// and one probe call decides), "manual" (disabled by an operator) or
	// "budget" (healthy, and out until its spent budget's period resets,
	// at Until; Reason says which cap and how it was spent).
	State string `json:"state"`
	// Since is when the router was disabled; null when enabled.
	Since *time.Time `json:"since"`
	// Until is when the disable ends, as every replica holds it to the
	// failure policy; null when enabled, or disabled until enabled by
	// hand.
	Until *time.Time `json:"until"`
	// Clamped says the record in the bucket reaches further than the
	// policy allows, so the replicas act on Until instead of its own
	// time, which RecordUntil gives (null: the record has none).
	Clamped     bool       `json:"clamped"`
	RecordUntil *time.Time `json:"record_until"`
	// Provisional says another replica announced the disable and its
	// write has not reached the bucket yet.
	Provisional bool   `json:"provisional"`
	Reason      string `json:"reason"`
	// Status is the status code that caused the disable; null if none.
	Status *int `json:"status"`
	// By names the replica or person that wrote the record.
	By string `json:"by"`
	// Level is the backoff level of an automatic disable; null for a
	// manual one or an enabled router.
	Level *int `json:"level"`
	// Probe names the replica holding the router's probe call, while one
	// does.
	Probe string `json:"probe"`
	// Chosen counts the calls this replica sent the router for the pool
	// over Snapshot.Choices; ReplicaShare is their part of the pool's,
	// null when the pool had none.
	Chosen       uint64   `json:"chosen"`
	ReplicaShare *float64 `json:"replica_share"`

	// What the strategies read: the router's priority tier, its calls in
	// flight over the fleet, its recent upstream latency and the share of
	// its rate limit left (null until gecholog's transaction log has said),
	// and its share of the fleet's recent choices (null when the pool had
	// none), as `broker status --json` names them.
	Tier      *int     `json:"tier"`
	InFlight  *int64   `json:"in_flight"`
	LatencyMS *float64 `json:"latency_ms"`
	Headroom  *float64 `json:"headroom"`
	Share     *float64 `json:"share"`
	// RateLimitedUntil is when a router its upstream said has no request
	// or token left takes calls again; null when it is not waiting.
	RateLimitedUntil *time.Time `json:"rate_limited_until"`
	// Calls are its calls reported over the fleet within the failure-rate
	// window, and FailureRate the share of them that failed (null without
	// calls).
	Calls       int64    `json:"calls"`
	FailureRate *float64 `json:"failure_rate"`
	// Tokens are its calls' tokens over the whole fleet since the replica
	// started (every replica hears every call on gecholog's transaction
	// log), and Spend what they cost at its price (null: it has none).
	Tokens Tokens   `json:"tokens"`
	Spend  *float64 `json:"spend"`
	// Sessions are the sessions pinned to the router and those that moved
	// (null: its pool has no "session" affinity, the only one remembered).
	Sessions *RouterSessions `json:"sessions"`
}

// Tokens are a router's tokens by kind.
type Tokens struct {
	Input       int64 `json:"input"`
	Output      int64 `json:"output"`
	CachedInput int64 `json:"cached_input"`
	// Unknown counts calls whose answer did not say their tokens.
	Unknown uint64 `json:"unknown"`
}

// router turns the core's view of one router into the page's.
func router(v broker.RouterView) Router {
	r := Router{Router: v.Router, State: v.Phase.String(), Provisional: v.Provisional, Probe: v.Probe,
		Tier: ptr(v.Priority), InFlight: ptr(v.InFlight), Calls: v.Calls}
	if v.LatencyKnown {
		r.LatencyMS = ptr(float64(v.Latency) / float64(time.Millisecond))
	}
	if v.HeadroomKnown {
		r.Headroom = ptr(v.Headroom)
	}
	if !v.RateLimitedUntil.IsZero() {
		r.RateLimitedUntil = ptr(v.RateLimitedUntil.UTC())
	}
	if v.Calls > 0 {
		r.FailureRate = ptr(float64(v.Failures) / float64(v.Calls))
	}
	r.Tokens = Tokens{Input: v.Usage.Input, Output: v.Usage.Output, CachedInput: v.Usage.CachedInput, Unknown: v.Usage.Unknown}
	if v.Price != nil || v.Usage.Spend != 0 {
		r.Spend = ptr(v.Usage.Spend)
	}
	if !v.BudgetUntil.IsZero() {
		// Healthy, and out until its spent budget's period resets.
		r.State, r.Until, r.Reason = "budget", ptr(v.BudgetUntil.UTC()), v.BudgetWhy
	}
	rec := v.Record
	if rec == nil || v.Phase == broker.Enabled {
		return r
	}
	r.Reason, r.By = rec.Reason, rec.By
	if !rec.At.IsZero() {
		r.Since = ptr(rec.At.UTC())
	}
	if !rec.Until.IsZero() {
		r.Until = ptr(rec.Until.UTC())
	}
	if rec.Status != 0 {
		r.Status = ptr(rec.Status)
	}
	if !rec.Manual {
		r.Level = ptr(rec.Level)
	}
	if v.Stored != nil {
		r.Clamped = true
		if !v.Stored.Until.IsZero() {
			r.RecordUntil = ptr(v.Stored.Until.UTC())
		}
	}
	return r
}

func ptr[T any](v T) *T { return &v }

// Config is the revision of the fleet's configuration a replica runs by.
type Config struct {
	// Revision is the revision in force; 0 when the replica runs by its
	// own settings (no JetStream).
	Revision uint64 `json:"revision"`
	// Refused is "refused revision N: why" while the newest revision is
	// one the replica refused; "" otherwise.
	Refused string `json:"refused,omitempty"`
	// Note says what else the operator should know: the pools file is out
	// of date, the bucket was deleted, no JetStream.
	Note string `json:"note,omitempty"`
}

// Fleet is the fleet's configuration as the replica hears it on the stats
// subject: every replica's revision, and drift. What another replica told
// is only shown: it changes nothing this replica runs.
type Fleet struct {
	// Revision is the one the replicas are held to: the highest any runs.
	Revision uint64 `json:"revision"`
	// Drift counts the replicas out of step, and Summary says in a line
	// which revisions they run ("" when no replica told one).
	Drift   int    `json:"drift"`
	Summary string `json:"summary"`
	// Replicas are this replica, then those out of step, then the rest,
	// each in ID order, at most 64; ReplicasMore counts the others.
	Replicas     []Replica `json:"replicas"`
	ReplicasMore int       `json:"replicas_more"`
	// Sessions add up the session counts of every replica heard, those
	// not listed among them; null when none told any.
	Sessions *Sessions `json:"sessions"`
}

// Replica is one replica's configuration as heard.
type Replica struct {
	ID string `json:"id"`
	// This marks the replica that answered.
	This bool `json:"this"`
	// Revision is the revision it runs; null when it told none (a broker
	// from before replicas told it).
	Revision *uint64 `json:"revision"`
	// Refused is "refused revision N: why" while it refuses the newest.
	Refused string `json:"refused"`
	// Drift says why it is out of step; "" when it is in step.
	Drift string `json:"drift"`
	// Sessions are its calls of pools with affinity since it started;
	// null when it told none.
	Sessions *Sessions `json:"sessions"`
}
