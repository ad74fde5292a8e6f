package replica

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/gecholog"
	"github.com/gecholog/broker/statuspage"
)

// replyBuckets span the handler's time per message: a microsecond or two
// when all is well, up to gecholog's processor timeout, 50 ms in
// gl_config.json, after which gl has given up on the answer anyway.
var replyBuckets = []float64{
	1e-6, 2.5e-6, 5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6,
	1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3,
}

// monitor is one replica's HTTP listener for /metrics, /healthz,
// /readyz, /explain and the status page at /, and the state those report.
// Each Run has its own, with its own registry, so replicas in one process
// do not share metrics.
type monitor struct {
	stage   *progress // the replica's, which /readyz reports
	link    atomic.Pointer[link]
	bucket  atomic.Pointer[bucketState] // nil until the replica first checks
	broker  atomic.Pointer[broker.Broker]
	handler atomic.Pointer[gecholog.Handler]
	tx      atomic.Pointer[func() TransactionCounts]
	mode    atomic.Pointer[string] // "ttl", "expiry" or "local" once decided
	conf    atomic.Pointer[func() ConfigState]
	revs    atomic.Pointer[func() Revisions]

	id     string // the replica's
	reply  prometheus.Histogram
	page   *statuspage.Page
	server *http.Server
	log    *slog.Logger
	done   chan struct{} // closed when the server has stopped serving
}

// newMonitor builds the registry and the handlers for the replica id,
// whose stage is st; listen starts them.
func newMonitor(id string, st *progress, log *slog.Logger) *monitor {
	m := &monitor{id: id, stage: st, log: log, done: make(chan struct{})}
	m.reply = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "broker_reply_seconds",
		Help:    "Time from receiving a processor message to having sent its reply.",
		Buckets: replyBuckets,
	})
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.reply,
		statsCollector{m},
		sessionCollector{m},
		budgetCollector{m},
	)
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", m.readyz)
	mux.HandleFunc("GET /explain", m.explain)
	m.page = statuspage.New(pageSource{m})
	m.page.Register(mux)
	m.server = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	return m
}

// listen binds addr and serves in the background, closing connections
// idle for idle and keeping at most maxConns open (see connLimit); the
// error names the setting, so a port in use stops startup with one clear
// line.
func (m *monitor) listen(addr string, idle time.Duration, maxConns int) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics-addr %q: %w", addr, err)
	}
	limit := newConnLimit(ln, maxConns, m.log)
	m.server.IdleTimeout = idle
	m.server.ConnState = limit.connState
	m.log.Info("metrics listening", slog.String("addr", ln.Addr().String()))
	go func() {
		defer close(m.done)
		if err := m.server.Serve(limit); !errors.Is(err, http.ErrServerClosed) {
			m.log.Error("metrics listener stopped", slog.Any("error", err))
		}
	}()
	return nil
}

// close stops the listener, letting a scrape in progress finish. Open
// status pages are let go first: their event streams never finish.
func (m *monitor) close() {
	if m == nil {
		return
	}
	m.page.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := m.server.Shutdown(ctx); err != nil {
		m.server.Close()
	}
	<-m.done
}

// notReady says why the replica should not get calls, or "" if it should.
func (m *monitor) notReady() string {
	s := m.stage.load()
	if s == stopping {
		return s.String()
	}
	// The subscription survives a reconnect, but while the connection is
	// down no call reaches this replica.
	if l := m.link.Load(); l != nil {
		if up, _ := l.state(); !up {
			return notConnected.String()
		}
	}
	if s != ready {
		return s.String()
	}
	if b := m.bucket.Load(); b != nil && b.Stale {
		return b.String()
	}
	return ""
}

func (m *monitor) readyz(w http.ResponseWriter, _ *http.Request) {
	if r := m.notReady(); r != "" {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, r+"\n")
		return
	}
	io.WriteString(w, "ok\n")
}

// pageSource is what the status page reads of the replica.
type pageSource struct{ m *monitor }

func (p pageSource) Broker() *broker.Broker { return p.m.broker.Load() }

func (p pageSource) Status() statuspage.Status {
	st := statuspage.Status{ID: p.m.id, NotReady: p.m.notReady()}
	if h := p.m.handler.Load(); h != nil {
		st.SessionHeader = h.SessionHeaderName()
	}
	if l := p.m.link.Load(); l != nil {
		st.Connected, st.Server = l.state()
		if !st.Connected {
			st.Server = ""
		}
	}
	if b := p.m.bucket.Load(); b != nil && b.Stale {
		st.Stale = b.String()
	}
	if mode := p.m.mode.Load(); mode != nil {
		st.Mode = *mode
	}
	if conf := p.m.conf.Load(); conf != nil {
		c := (*conf)()
		st.Config = statuspage.Config{Revision: c.Revision, Refused: c.Refused, Note: c.Note}
	}
	if revs := p.m.revs.Load(); revs != nil {
		f := (*revs)()
		st.Fleet = statuspage.Fleet{Revision: f.Revision, Drift: f.Drift, Summary: f.Summary(), Replicas: make([]statuspage.Replica, len(f.Replicas))}
		for i, r := range f.Replicas {
			st.Fleet.Replicas[i] = statuspage.Replica{ID: r.ID, This: r.ID == p.m.id, Revision: r.Revision, Refused: r.Refused, Drift: r.Drift,
				Sessions: p.m.pageSessions(r)}
		}
	}
	return st
}

// The descriptions of the metrics read from broker.Stats at scrape time.
var (
	callsDesc = prometheus.NewDesc("broker_calls_total",
		"Processor calls answered, by context (request, response, unknown) and outcome.",
		[]string{"context", "outcome"}, nil)
	choicesDesc = prometheus.NewDesc("broker_choices_total",
		"Request contexts answered with a router, by ingress (pool) and router.",
		[]string{"ingress", "router"}, nil)
	failureReportsDesc = prometheus.NewDesc("broker_failure_reports_total",
		"Response contexts whose status counts as a failure, by router (other: a path no pool has) and status.",
		[]string{"router", "status"}, nil)
	transitionsDesc = prometheus.NewDesc("broker_router_transitions_total",
		"Routers disabled or enabled in this replica's view, by router, new state (to) and reason.",
		[]string{"router", "to", "reason"}, nil)
	disabledDesc = prometheus.NewDesc("broker_disabled_routers",
		"Routers disabled now in this replica's view.", nil, nil)
	kvWritesDesc = prometheus.NewDesc("broker_kv_writes_total",
		"Writes to the router health bucket, including failed ones.", nil, nil)
	kvErrorsDesc = prometheus.NewDesc("broker_kv_errors_total",
		"Writes to the router health bucket that failed (losing a race to another replica is not a failure).", nil, nil)
	viewRepairsDesc = prometheus.NewDesc("broker_view_repairs_total",
		"Routers whose view this replica found differing from the bucket, and took the bucket's word for, in its twice-a-second check.", nil, nil)
	watchEventsDesc = prometheus.NewDesc("broker_watch_events_total",
		"Changes heard from the router health bucket.", nil, nil)
	watchAgeDesc = prometheus.NewDesc("broker_watch_last_event_age_seconds",
		"Seconds since the last change heard from the router health bucket; NaN if none yet.", nil, nil)
	ttlModeDesc = prometheus.NewDesc("broker_ttl_mode",
		"How disables expire: ttl (per-key TTLs on the server), expiry (readers enforce them) or local (no JetStream, nothing shared); 1 for the active mode.",
		[]string{"mode"}, nil)
	connectedDesc = prometheus.NewDesc("broker_nats_connected",
		"1 while connected to the NATS server, else 0.", nil, nil)
	kvFailuresDesc = prometheus.NewDesc("broker_kv_write_failures_total",
		"Reads and writes of router health in the bucket that failed and were retried (with a jittered, capped backoff), by cause: conflict (another replica wrote the key first), timeout, no_leader, no_quorum, no_jetstream, not_connected, other.",
		[]string{"cause"}, nil)
	bucketReachableDesc = prometheus.NewDesc("broker_bucket_reachable",
		"1 while the router health bucket answers with a leader and its quorum, 0 once it has not for 2 s: the view may be stale.", nil, nil)
	bucketAnswerDesc = prometheus.NewDesc("broker_bucket_last_answer_timestamp_seconds",
		"When the router health bucket last answered with a leader and its quorum (unix seconds); with broker_bucket_reachable 0, since when it has not.", nil, nil)
	routerStateDesc = prometheus.NewDesc("broker_router_state",
		"Each pool router's state in this replica's view: 0 enabled, 1 disabled, 2 probation (one probe call decides), 3 disabled by hand.",
		[]string{"ingress", "router"}, nil)
	// What the strategies and the failure-rate rule read, per pool router:
	// the pools file bounds the labels.
	priorityDesc = prometheus.NewDesc("broker_router_priority",
		"Each pool router's tier, lower first.", []string{"ingress", "router"}, nil)
	inFlightDesc = prometheus.NewDesc("broker_router_in_flight",
		"Calls in flight to the router over the whole fleet: chosen and not reported yet, within the in-flight bound.",
		[]string{"ingress", "router"}, nil)
	shareDesc = prometheus.NewDesc("broker_router_share_ratio",
		"The router's share of its pool's recent choices over the whole fleet, 0 to 1.", []string{"ingress", "router"}, nil)
	latencyDesc = prometheus.NewDesc("broker_router_latency_seconds",
		"The router's recent upstream time from gecholog's transaction log (a moving average); NaN until a call of it is heard of.",
		[]string{"ingress", "router"}, nil)
	headroomDesc = prometheus.NewDesc("broker_router_headroom_ratio",
		"The share of the router's rate limit left, from its upstream's rate-limit headers, 0 to 1; NaN while its upstream sends none.",
		[]string{"ingress", "router"}, nil)
	rateLimitedDesc = prometheus.NewDesc("broker_router_rate_limited_until_timestamp_seconds",
		"When a router its upstream said has no request or token left takes calls again (its reset, held within the longest disable), in unix seconds; NaN while it is not waiting.",
		[]string{"ingress", "router"}, nil)
	recentCallsDesc = prometheus.NewDesc("broker_router_recent_calls",
		"Calls of the router reported over the whole fleet within the failure-rate window.", []string{"ingress", "router"}, nil)
	transactionsDesc = prometheus.NewDesc("broker_transactions_total",
		"Transactions from gecholog's logger subject, by outcome: read (by this replica, in the replicas' queue group), shared (read by another replica and told this one as a digest), too_large and unreadable (ignored), dropped (came faster than the replica read them), and messages of digests: bad_digests (could not be read: forged or from a broken client), unshared (could not be told).",
		[]string{"outcome"}, nil)
	outOfBoundsDesc = prometheus.NewDesc("broker_transactions_out_of_bounds_total",
		"Transactions read of which a value was ignored as out of bounds: an upstream time longer than the in-flight bound or negative, a rate-limit header that cannot be read or whose reset is past the year 2262.",
		nil, nil)
	// Tokens and spend from the transaction log, which every replica hears
	// (read, or told as digests): each replica's counts are the fleet's totals since it
	// started. The pools bound the routers; every other path is "other".
	tokensDesc = prometheus.NewDesc("broker_tokens_total",
		"Tokens the calls of each router used, over the whole fleet since this replica started, as the upstream's answers in gecholog's transaction log said them, by kind: input (not read from the prompt cache), output, cached_input.",
		[]string{"router", "kind"}, nil)
	spendDesc = prometheus.NewDesc("broker_spend_total",
		"What the tokens of each router with a price cost, in the price's currency, over the whole fleet since this replica started.",
		[]string{"router"}, nil)
	usageUnknownDesc = prometheus.NewDesc("broker_usage_unknown_total",
		"Calls whose answer did not say its tokens (a streamed answer without usage, an error), by router.",
		[]string{"router"}, nil)
	usageRefusedDesc = prometheus.NewDesc("broker_usage_refused_total",
		"Calls whose tokens were not counted, by router and reason: unreadable (a count negative, fractional, not a number) or capped (above BROKER_MAX_CALL_TOKENS).",
		[]string{"router", "reason"}, nil)
	logAgeDesc = prometheus.NewDesc("broker_transaction_log_last_heard_age_seconds",
		"Seconds since the replica last heard a call on gecholog's transaction log; NaN if never.", nil, nil)
	failureRateDesc = prometheus.NewDesc("broker_router_failure_rate_ratio",
		"The share of the router's calls reported within the failure-rate window that failed, over the whole fleet; NaN without calls.",
		[]string{"ingress", "router"}, nil)
)

// known is x, or NaN when it is not known: a gap in a graph, and false in
// any comparison an alert makes.
func known(x float64, ok bool) float64 {
	if !ok {
		return math.NaN()
	}
	return x
}

// stateValue is broker_router_state's value for each phase: the metric's
// documented interface, kept apart from the order of the core's constants.
var stateValue = map[broker.Phase]float64{broker.Enabled: 0, broker.Disabled: 1, broker.Probation: 2, broker.Manual: 3}

// statsCollector turns a broker.Stats snapshot into metrics when scraped,
// so counting costs the request path nothing beyond the broker's own
// atomic counters.
type statsCollector struct{ m *monitor }

func (c statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{callsDesc, choicesDesc, failureReportsDesc, transitionsDesc, disabledDesc,
		kvWritesDesc, kvErrorsDesc, kvFailuresDesc, bucketReachableDesc, bucketAnswerDesc, watchEventsDesc, viewRepairsDesc, watchAgeDesc, ttlModeDesc, connectedDesc, routerStateDesc,
		priorityDesc, inFlightDesc, shareDesc, latencyDesc, headroomDesc, rateLimitedDesc, recentCallsDesc, failureRateDesc,
		transactionsDesc, outOfBoundsDesc, logAgeDesc, tokensDesc, spendDesc, usageUnknownDesc, usageRefusedDesc, configRevisionDesc, configRefusedDesc, configReplicasDesc, configDriftDesc} {
		ch <- d
	}
}

func (c statsCollector) Collect(ch chan<- prometheus.Metric) {
	connected := 0.0
	if l := c.m.link.Load(); l != nil {
		if up, _ := l.state(); up {
			connected = 1
		}
	}
	ch <- prometheus.MustNewConstMetric(connectedDesc, prometheus.GaugeValue, connected)
	if b := c.m.bucket.Load(); b != nil {
		reachable := 1.0
		if b.Stale {
			reachable = 0
		}
		ch <- prometheus.MustNewConstMetric(bucketReachableDesc, prometheus.GaugeValue, reachable)
		if !b.LastAnswer.IsZero() {
			ch <- prometheus.MustNewConstMetric(bucketAnswerDesc, prometheus.GaugeValue, float64(b.LastAnswer.UnixMilli())/1e3)
		}
	}
	if mode := c.m.mode.Load(); mode != nil {
		ch <- prometheus.MustNewConstMetric(ttlModeDesc, prometheus.GaugeValue, 1, *mode)
	}
	if conf := c.m.conf.Load(); conf != nil {
		st := (*conf)()
		refused := 0.0
		if st.Refused != "" {
			refused = 1
		}
		ch <- prometheus.MustNewConstMetric(configRevisionDesc, prometheus.GaugeValue, float64(st.Revision))
		ch <- prometheus.MustNewConstMetric(configRefusedDesc, prometheus.GaugeValue, refused)
	}
	if revs := c.m.revs.Load(); revs != nil {
		f := (*revs)()
		labels, counts := f.perRevision(maxRevisionSeries)
		for i, l := range labels {
			ch <- prometheus.MustNewConstMetric(configReplicasDesc, prometheus.GaugeValue, float64(counts[i]), l)
		}
		ch <- prometheus.MustNewConstMetric(configDriftDesc, prometheus.GaugeValue, float64(f.Drift))
	}
	b := c.m.broker.Load()
	if b == nil {
		return // still connecting: there is nothing to count yet
	}
	s := b.Stats()
	for _, o := range broker.Outcomes() {
		ch <- prometheus.MustNewConstMetric(callsDesc, prometheus.CounterValue, float64(s.Calls[o]), o.Context(), o.String())
	}
	ch <- prometheus.MustNewConstMetric(callsDesc, prometheus.CounterValue, float64(c.m.handler.Load().Malformed()), "unknown", "malformed")
	for _, n := range s.Choices {
		ch <- prometheus.MustNewConstMetric(choicesDesc, prometheus.CounterValue, float64(n.N), n.Ingress, n.Router)
	}
	for _, n := range s.FailureReports {
		ch <- prometheus.MustNewConstMetric(failureReportsDesc, prometheus.CounterValue, float64(n.N), n.Router, n.Status)
	}
	for _, n := range s.Transitions {
		ch <- prometheus.MustNewConstMetric(transitionsDesc, prometheus.CounterValue, float64(n.N), n.Router, n.To, n.Reason)
	}
	ch <- prometheus.MustNewConstMetric(disabledDesc, prometheus.GaugeValue, float64(s.Disabled))
	for _, u := range s.Usage {
		counter := func(d *prometheus.Desc, x float64, labels ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, x, append([]string{u.Router}, labels...)...)
		}
		counter(tokensDesc, float64(u.Input), "input")
		counter(tokensDesc, float64(u.Output), "output")
		counter(tokensDesc, float64(u.CachedInput), "cached_input")
		if u.Price != nil || u.Spend != 0 {
			counter(spendDesc, u.Spend)
		}
		counter(usageUnknownDesc, float64(u.Unknown))
		counter(usageRefusedDesc, float64(u.Unreadable), broker.RefusedUnreadable)
		counter(usageRefusedDesc, float64(u.Capped), broker.RefusedCapped)
	}
	// One series per router whose value is its state, so that a dashboard
	// draws each router's state over time as one line.
	for _, v := range b.View(time.Now()) {
		gauge := func(d *prometheus.Desc, x float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, x, v.Ingress, v.Router)
		}
		gauge(routerStateDesc, stateValue[v.Phase])
		gauge(priorityDesc, float64(v.Priority))
		gauge(inFlightDesc, float64(v.InFlight))
		gauge(shareDesc, v.Share)
		gauge(latencyDesc, known(v.Latency.Seconds(), v.LatencyKnown))
		gauge(headroomDesc, known(v.Headroom, v.HeadroomKnown))
		gauge(rateLimitedDesc, known(float64(v.RateLimitedUntil.UnixNano())/1e9, !v.RateLimitedUntil.IsZero()))
		gauge(recentCallsDesc, float64(v.Calls))
		gauge(failureRateDesc, known(float64(v.Failures)/float64(v.Calls), v.Calls > 0))
	}
	ch <- prometheus.MustNewConstMetric(kvWritesDesc, prometheus.CounterValue, float64(s.KVWrites))
	ch <- prometheus.MustNewConstMetric(kvErrorsDesc, prometheus.CounterValue, float64(s.KVErrors))
	for i, n := range s.KVFailures {
		ch <- prometheus.MustNewConstMetric(kvFailuresDesc, prometheus.CounterValue, float64(n), broker.WriteCauses[i])
	}
	ch <- prometheus.MustNewConstMetric(watchEventsDesc, prometheus.CounterValue, float64(s.WatchEvents))
	ch <- prometheus.MustNewConstMetric(viewRepairsDesc, prometheus.CounterValue, float64(s.ViewRepairs))
	// NaN rather than -1 when nothing has been heard: the bucket only
	// changes when a router fails, so "no event yet" is normal, and NaN
	// makes "age > X" alerts false and leaves a gap in graphs instead of a
	// misleading value.
	age := math.NaN()
	if !s.LastWatch.IsZero() {
		age = time.Since(s.LastWatch).Seconds()
	}
	ch <- prometheus.MustNewConstMetric(watchAgeDesc, prometheus.GaugeValue, age)
	if tx := c.m.tx.Load(); tx != nil {
		t := (*tx)()
		for outcome, n := range map[string]uint64{"read": t.Read, "shared": t.Shared, "too_large": t.TooLarge, "unreadable": t.Unreadable,
			"dropped": t.Dropped, "bad_digests": t.BadDigests, "unshared": t.Unshared} {
			ch <- prometheus.MustNewConstMetric(transactionsDesc, prometheus.CounterValue, float64(n), outcome)
		}
		ch <- prometheus.MustNewConstMetric(outOfBoundsDesc, prometheus.CounterValue, float64(t.OutOfBounds))
	}
	heard := b.Heard()
	ch <- prometheus.MustNewConstMetric(logAgeDesc, prometheus.GaugeValue, known(time.Since(heard).Seconds(), !heard.IsZero()))
}

// The methods Run calls as it starts and stops. Each does nothing on a
// nil monitor, which is what Run has when metrics-addr is empty; the
// replica's stage is its own, and the monitor only reads it.

// connected records the connection's state, which /readyz and
// broker_nats_connected report.
func (m *monitor) connected(l *link) {
	if m != nil {
		m.link.Store(l)
	}
}

// bucketSeen records what the replica last found of the bucket.
func (m *monitor) bucketSeen(b bucketState) {
	if m != nil {
		m.bucket.Store(&b)
	}
}

// attached records how disables expire: "ttl", "expiry" or "local".
func (m *monitor) attached(mode string) {
	if m != nil {
		m.mode.Store(&mode)
	}
}

// started records the broker whose Stats are scraped, the handler that
// counts malformed messages, and what counts the transaction log read.
func (m *monitor) started(b *broker.Broker, h *gecholog.Handler, tx func() TransactionCounts) {
	if m != nil {
		m.handler.Store(h)
		m.tx.Store(&tx)
		m.broker.Store(b)
	}
}

// timed wraps a message handler to observe its time in
// broker_reply_seconds. Without a monitor the handler is returned as it
// is, so a replica without metrics does not even read the clock.
func (m *monitor) timed(h nats.MsgHandler) nats.MsgHandler {
	if m == nil {
		return h
	}
	reply := m.reply
	return func(msg *nats.Msg) {
		start := time.Now()
		h(msg)
		reply.Observe(time.Since(start).Seconds())
	}
}
