package replica

import (
	"maps"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gecholog/broker/broker"
)

// Where the sessions of pools with "session" affinity are, per router, as
// the replica's memory of gecholog's transaction log says
// (broker.SessionRouters): on /metrics, in what a replica tells the others
// (for `broker status`) and on the status page. The labels are the pools'
// router paths, a bounded set; never a session's key or a header's value.

var (
	sessionsPinnedDesc = prometheus.NewDesc("broker_sessions_pinned",
		"Sessions this replica remembers, within their lifetime, whose last call (heard on gecholog's transaction log) used the router: where their next calls go. Every replica hears the same log, so they agree once they have heard it for a session's lifetime.",
		[]string{"router"}, nil)
	sessionMovesDesc = prometheus.NewDesc("broker_session_moves_total",
		"Sessions heard on gecholog's transaction log moving between routers since this replica started, by router and direction: in (a call on the router, the session's call before on another), out (the session's call before on the router, this one on another).",
		[]string{"router", "direction"}, nil)
	sessionsEvictedDesc = prometheus.NewDesc("broker_sessions_evicted_total",
		"Sessions this replica forgot before their lifetime was over because it remembered the most it keeps (100,000); their next calls go by their session's order.",
		nil, nil)
)

func describeSessionRouters(ch chan<- *prometheus.Desc) {
	ch <- sessionsPinnedDesc
	ch <- sessionMovesDesc
	ch <- sessionsEvictedDesc
}

// collectSessionRouters reads the memory of sessions: SessionRouters looks
// at every session remembered, so once per scrape, never per call.
func collectSessionRouters(ch chan<- prometheus.Metric, b *broker.Broker, s broker.SessionCounts) {
	ch <- prometheus.MustNewConstMetric(sessionsEvictedDesc, prometheus.CounterValue, float64(s.Evicted))
	for _, r := range b.SessionRouters() {
		ch <- prometheus.MustNewConstMetric(sessionsPinnedDesc, prometheus.GaugeValue, float64(r.Pinned), r.Router)
		ch <- prometheus.MustNewConstMetric(sessionMovesDesc, prometheus.CounterValue, float64(r.MovedIn), r.Router, "in")
		ch <- prometheus.MustNewConstMetric(sessionMovesDesc, prometheus.CounterValue, float64(r.MovedOut), r.Router, "out")
	}
}

// RouterSessionsTold is what a replica tells of one router's sessions
// (broker.SessionRouter), in RouterStats. Its JSON names are an interface
// (`broker status --json` reads them): add fields, never rename them.
type RouterSessionsTold struct {
	Pinned   int64  `json:"pinned"`
	MovedIn  uint64 `json:"moved_in"`
	MovedOut uint64 `json:"moved_out"`
}

// Heard is s as it is kept from the wire: nil stays nil; a count of
// sessions pinned outside 0..broker.MaxRemembered, which no replica
// remembers, is held to it. The moves are counters: whoever reads them
// takes the largest, which cannot wrap.
func (s *RouterSessionsTold) Heard() *RouterSessionsTold {
	if s == nil {
		return nil
	}
	c := *s
	c.Pinned = min(max(c.Pinned, 0), broker.MaxRemembered)
	return &c
}

// sessionRoutersEvery is how often a replica reads its memory of sessions
// for what it tells: the memory is scanned whole, and the counts are told
// every statsEvery.
const sessionRoutersEvery = time.Second

// sessionRoutersTold is the last reading of the memory a replica tells,
// by router; nil for a router with nothing to tell.
type sessionRoutersTold struct {
	at     time.Time
	routes map[string]*RouterSessionsTold
}

// get returns the reading, made again from b when sessionRoutersEvery has
// passed since the last one.
func (p *sessionRoutersTold) get(b *broker.Broker, now time.Time) map[string]*RouterSessionsTold {
	if p.routes != nil && now.Sub(p.at) < sessionRoutersEvery && !now.Before(p.at) {
		return p.routes
	}
	p.at, p.routes = now, map[string]*RouterSessionsTold{}
	for _, r := range b.SessionRouters() {
		if r.Pinned != 0 || r.MovedIn != 0 || r.MovedOut != 0 {
			p.routes[r.Router] = &RouterSessionsTold{Pinned: int64(r.Pinned), MovedIn: r.MovedIn, MovedOut: r.MovedOut}
		}
	}
	return p.routes
}

// withSessions adds to routers, as told, the sessions of each: a router
// with sessions and no other count to tell is added to the end, in path
// order.
func withSessions(routers []RouterStats, pins map[string]*RouterSessionsTold) []RouterStats {
	if len(pins) == 0 {
		return routers
	}
	told := make(map[string]bool, len(routers))
	for i := range routers {
		routers[i].Sessions = pins[routers[i].Router]
		told[routers[i].Router] = true
	}
	for _, path := range slices.Sorted(maps.Keys(pins)) {
		if !told[path] {
			routers = append(routers, RouterStats{Router: path, Sessions: pins[path]})
		}
	}
	return routers
}
