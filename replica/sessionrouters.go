package replica

import (
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
