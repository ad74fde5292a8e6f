package replica

import (
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
}

// explainedAffinity is a as Explained says it; nil when a is off.
// sessionHeader is the header a "session" pool reads.
func explainedAffinity(a broker.Affinity, sessionHeader string) *ExplainedAffinity {
	if !a.On() {
		return nil
	}
	x := &ExplainedAffinity{Session: a.Session, Header: a.Header, LoadFactor: a.Factor()}
	if a.Session {
		x.Header = sessionHeader
	}
	return x
}

// The session metrics, read from the broker and the handler at scrape
// time.
var (
	sessionCallsDesc = prometheus.NewDesc("broker_session_calls_total",
		"Calls of pools with session affinity answered by this replica, by outcome: keyed (went by their session's order), spilled (keyed, and passed over their session's first router, which was over its load bound or had no rate limit left; counted in keyed too), no_key (no session header, or one that gave no key; went by the pool's strategy).",
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
}

func (c sessionCollector) Collect(ch chan<- prometheus.Metric) {
	b, h := c.m.broker.Load(), c.m.handler.Load()
	if b == nil || h == nil {
		return // still connecting: there is nothing to count yet
	}
	s := b.Sessions()
	for outcome, n := range map[string]uint64{"keyed": s.Keyed, "spilled": s.Spilled, "no_key": s.NoKey} {
		ch <- prometheus.MustNewConstMetric(sessionCallsDesc, prometheus.CounterValue, float64(n), outcome)
	}
	problems := h.KeyProblems()
	for _, p := range gecholog.KeyProblemsCounted {
		ch <- prometheus.MustNewConstMetric(sessionKeyProblemsDesc, prometheus.CounterValue, float64(problems[p]), p.String())
	}
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
