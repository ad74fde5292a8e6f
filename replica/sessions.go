package replica

import (
	"bytes"
	"encoding/json"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/gecholog"
	"github.com/gecholog/broker/internal/safetext"
	"github.com/gecholog/broker/statuspage"
)

// Session affinity as operators see it: the calls of pools with affinity
// by what became of their key, on /metrics, in what a replica tells the
// others (for `broker status` and the status page), and each pool's
// affinity in /explain. Only names and counts: no header's value is ever
// kept, told or shown.

// SessionsTold is what a replica tells the others of the calls of its
// pools with affinity since it started (broker.SessionCounts), and the
// header its pools with "affinity": "session" read. Its JSON names are an
// interface (`broker status --replicas --json`): add fields, never rename
// them.
type SessionsTold struct {
	Keyed   uint64 `json:"keyed"`
	Spilled uint64 `json:"spilled"`
	NoKey   uint64 `json:"no_key"`
	// Header is the replica's session header (gecholog's
	// session_id_header): a name, never a value.
	Header string `json:"header,omitempty"`
}

// sessionsTold is what the replica with broker b and handler h tells.
func sessionsTold(b *broker.Broker, h *gecholog.Handler) *SessionsTold {
	s := b.Sessions()
	return &SessionsTold{Keyed: s.Keyed, Spilled: s.Spilled, NoKey: s.NoKey, Header: h.SessionHeaderName()}
}

// Heard is s as it is kept from the wire: nil stays nil, the header name
// is cut to what is shown.
func (s *SessionsTold) Heard() *SessionsTold {
	if s == nil {
		return nil
	}
	c := *s
	c.Header = safetext.Cut(c.Header, safetext.MaxShown)
	return &c
}

// ExplainedAffinity is a pool's session affinity in Explained.
type ExplainedAffinity struct {
	// Session is true when the pool keys calls by gecholog's session
	// (its first three parts), false when by Header's whole value.
	Session bool `json:"session"`
	// Header names the request header the key is read from: the pool's,
	// or for Session the replica's session header.
	Header string `json:"header"`
	// LoadFactor is the bound on a router's calls in flight, in times its
	// weight's share of its tier's (the default when the pool gives none).
	LoadFactor float64 `json:"load_factor"`
	// TTLSeconds is how long a session is remembered after its last call
	// was heard on gecholog's transaction log (the default when the pool
	// gives none), and Stay whether a session that moved stays where it
	// moved; "session" affinity only (0 and false for a header's).
	TTLSeconds float64 `json:"ttl_seconds,omitempty"`
	Stay       bool    `json:"stay,omitempty"`
}

// ExplainAffinity is a as Explained and `broker status` say it, for a
// pool with affinity; sessionHeader is the header a "session" pool reads.
func ExplainAffinity(a broker.Affinity, sessionHeader string) *ExplainedAffinity {
	x := &ExplainedAffinity{Session: a.Session, Header: a.Header, LoadFactor: a.Factor()}
	if a.Session {
		ttl := a.TTL
		if ttl == 0 {
			ttl = broker.DefaultSessionTTL
		}
		x.Header, x.TTLSeconds, x.Stay = sessionHeader, ttl.Seconds(), a.Stay
	}
	return x
}

// explainedAffinity is a as Explained says it; nil when a is off.
// sessionHeader is the header a "session" pool reads.
func explainedAffinity(a broker.Affinity, sessionHeader string) *ExplainedAffinity {
	if !a.On() {
		return nil
	}
	return ExplainAffinity(a, sessionHeader)
}

// The session metrics, read from the broker and the handler at scrape
// time.
var (
	sessionCallsDesc = prometheus.NewDesc("broker_session_calls_total",
		"Calls of pools with session affinity answered by this replica, by outcome: keyed (went by their session's order), spilled (keyed, and passed over their session's first router, which was over its load bound or had no rate limit left; counted in keyed too), no_key (no session header, or one that gave no key; went by the pool's strategy), remembered (keyed, and sent to the router gecholog's transaction log says the session used, not by its order; counted in keyed too).",
		[]string{"outcome"}, nil)
	sessionKeyProblemsDesc = prometheus.NewDesc("broker_session_key_problems_total",
		"Calls of pools with session affinity whose session header gave no key, by problem: empty, too_long (over 256 bytes), malformed (not gecholog's list of strings, JSON escapes, or not a gecholog session id); counted in broker_session_calls_total{outcome=\"no_key\"}, as are calls without the header.",
		[]string{"problem"}, nil)
)

// sessionCollector turns the counts into metrics when scraped.
type sessionCollector struct{ m *monitor }

func (c sessionCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- sessionCallsDesc
	ch <- sessionKeyProblemsDesc
	describeSessionRouters(ch)
}

func (c sessionCollector) Collect(ch chan<- prometheus.Metric) {
	b, h := c.m.broker.Load(), c.m.handler.Load()
	if b == nil || h == nil {
		return // still connecting: there is nothing to count yet
	}
	s := b.Sessions()
	for outcome, n := range map[string]uint64{"keyed": s.Keyed, "spilled": s.Spilled, "no_key": s.NoKey, "remembered": s.Remembered} {
		ch <- prometheus.MustNewConstMetric(sessionCallsDesc, prometheus.CounterValue, float64(n), outcome)
	}
	problems := h.KeyProblems()
	for _, p := range gecholog.KeyProblemsCounted {
		ch <- prometheus.MustNewConstMetric(sessionKeyProblemsDesc, prometheus.CounterValue, float64(problems[p]), p.String())
	}
	collectSessionRouters(ch, b, s)
}

// pageSessions is r's session counts as the status page shows them: this
// replica's own from its broker, another's as it told them.
func (m *monitor) pageSessions(r ReplicaRevision) *statuspage.Sessions {
	s := r.Sessions
	if r.ID == m.id {
		b, h := m.broker.Load(), m.handler.Load()
		if b == nil || h == nil {
			return nil
		}
		s = sessionsTold(b, h)
	}
	if s == nil {
		return nil
	}
	return &statuspage.Sessions{Keyed: s.Keyed, Spilled: s.Spilled, NoKey: s.NoKey}
}

// ExplainedSession says where the calls of one session go now, asked
// with /explain?ingress=PATH&session=VALUE. The value is never in it.
type ExplainedSession struct {
	// Router is the router the session's next call goes to; "" when
	// NoKey says why it goes by the strategy, or no router is enabled.
	Router string `json:"router,omitempty"`
	// Spilled says its first router was passed over, being over its bound
	// or without rate limit left: Router is the next in its order.
	Spilled bool `json:"spilled,omitempty"`
	// NoKey says why the value gives no session: "empty", "too_long",
	// "malformed" (as broker_session_key_problems_total counts them), or
	// "no affinity" (the pool keys no call); "" when it gives one.
	NoKey string `json:"no_key,omitempty"`
	// Home is the router gecholog's transaction log says the session goes
	// back to ("": not remembered, or its lifetime is over), and
	// Remembered says Router is Home: the call goes there by the log, not
	// by the session's order.
	Home       string `json:"home,omitempty"`
	Remembered bool   `json:"remembered,omitempty"`
}

// maxSessionAsked bounds the value explain reads: a key is at most
// broker.MaxSessionKey bytes, so a longer value is too long anyway.
const maxSessionAsked = 4 * broker.MaxSessionKey

// explainSession says where the session whose header value is value goes
// in pool ingress, read as a call's would be: the header named as the
// pool says, keyed as gecholog.SessionKey keys it.
func explainSession(b *broker.Broker, ingress, value, sessionHeader string) *ExplainedSession {
	a := b.AffinityOf([]byte(ingress))
	if !a.On() {
		return &ExplainedSession{NoKey: "no affinity"}
	}
	if len(value) > maxSessionAsked {
		return &ExplainedSession{NoKey: gecholog.KeyLong.String()}
	}
	name := a.Header
	if a.Session {
		name = sessionHeader
	}
	// The value as gecholog sends it, in ingress_headers.
	var headers bytes.Buffer
	enc := json.NewEncoder(&headers)
	enc.SetEscapeHTML(false) // as gecholog writes it: an escape would make it malformed
	enc.Encode(map[string][]string{name: {value}})
	key, problem := gecholog.SessionKey(bytes.TrimSpace(headers.Bytes()), name, a.Session)
	switch {
	case problem != gecholog.KeyOK:
		return &ExplainedSession{NoKey: problem.String()}
	case len(key) == 0:
		return &ExplainedSession{NoKey: gecholog.KeyEmpty.String()}
	}
	w := b.SessionWay(ingress, key)
	return &ExplainedSession{Router: w.Router, Spilled: w.Spilled, Home: w.Home, Remembered: w.Remembered}
}
