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
)

// Why /readyz answers 503, in the order Run passes through them.
const (
	notConnected = "not connected to NATS"
	openingStore = "opening the router health bucket"
	loadingView  = "loading router health"
	subscribing  = "subscribing"
	stopping     = "stopping"
)

// replyBuckets span the handler's time per message: a microsecond or two
// when all is well, up to gecholog's processor timeout, 50 ms in
// gl_config.json, after which gl has given up on the answer anyway.
var replyBuckets = []float64{
	1e-6, 2.5e-6, 5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6,
	1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3,
}

// monitor is one replica's HTTP listener for /metrics, /healthz and
// /readyz, and the state those report. Each Run has its own, with its own
// registry, so replicas in one process do not share metrics.
type monitor struct {
	reason  atomic.Pointer[string] // why the replica is not ready; "" when it is
	nc      atomic.Pointer[nats.Conn]
	broker  atomic.Pointer[broker.Broker]
	handler atomic.Pointer[gecholog.Handler]
	mode    atomic.Pointer[string] // "ttl", "expiry" or "local" once decided

	reply  prometheus.Histogram
	server *http.Server
	log    *slog.Logger
	done   chan struct{} // closed when the server has stopped serving
}

// newMonitor builds the registry and the handlers; listen starts them.
func newMonitor(log *slog.Logger) *monitor {
	m := &monitor{log: log, done: make(chan struct{})}
	m.setReason(notConnected)
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
	)
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", m.readyz)
	m.server = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	return m
}

// listen binds addr and serves in the background; the error names the
// setting, so a port in use stops startup with one clear line.
func (m *monitor) listen(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics-addr %q: %w", addr, err)
	}
	m.log.Info("metrics listening", slog.String("addr", ln.Addr().String()))
	go func() {
		defer close(m.done)
		if err := m.server.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			m.log.Error("metrics listener stopped", slog.Any("error", err))
		}
	}()
	return nil
}

// close stops the listener, letting a scrape in progress finish.
func (m *monitor) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := m.server.Shutdown(ctx); err != nil {
		m.server.Close()
	}
	<-m.done
}

func (m *monitor) setReason(r string) { m.reason.Store(&r) }

// notReady says why the replica should not get calls, or "" if it should.
func (m *monitor) notReady() string {
	r := *m.reason.Load()
	if r == stopping {
		return r
	}
	// The subscription survives a reconnect, but while the connection is
	// down no call reaches this replica.
	if nc := m.nc.Load(); nc != nil && !nc.IsConnected() {
		return notConnected
	}
	return r
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

// The descriptions of the metrics read from broker.Stats at scrape time.
var (
	callsDesc = prometheus.NewDesc("broker_calls_total",
		"Processor calls answered, by context (request, response, unknown) and outcome.",
		[]string{"context", "outcome"}, nil)
	choicesDesc = prometheus.NewDesc("broker_choices_total",
		"Request contexts answered with a router, by ingress (pool) and router.",
		[]string{"ingress", "router"}, nil)
	transitionsDesc = prometheus.NewDesc("broker_router_transitions_total",
		"Routers disabled or enabled in this replica's view, by router, new state (to) and reason.",
		[]string{"router", "to", "reason"}, nil)
	disabledDesc = prometheus.NewDesc("broker_disabled_routers",
		"Routers disabled now in this replica's view.", nil, nil)
	kvWritesDesc = prometheus.NewDesc("broker_kv_writes_total",
		"Writes to the router health bucket, including failed ones.", nil, nil)
	kvErrorsDesc = prometheus.NewDesc("broker_kv_errors_total",
		"Writes to the router health bucket that failed (losing a race to another replica is not a failure).", nil, nil)
	watchEventsDesc = prometheus.NewDesc("broker_watch_events_total",
		"Changes heard from the router health bucket.", nil, nil)
	watchAgeDesc = prometheus.NewDesc("broker_watch_last_event_age_seconds",
		"Seconds since the last change heard from the router health bucket; NaN if none yet.", nil, nil)
	ttlModeDesc = prometheus.NewDesc("broker_ttl_mode",
		"How disables expire: ttl (per-key TTLs on the server), expiry (readers enforce them) or local (no JetStream, nothing shared); 1 for the active mode.",
		[]string{"mode"}, nil)
	connectedDesc = prometheus.NewDesc("broker_nats_connected",
		"1 while connected to the NATS server, else 0.", nil, nil)
)

// statsCollector turns a broker.Stats snapshot into metrics when scraped,
// so counting costs the request path nothing beyond the broker's own
// atomic counters.
type statsCollector struct{ m *monitor }

func (c statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{callsDesc, choicesDesc, transitionsDesc, disabledDesc,
		kvWritesDesc, kvErrorsDesc, watchEventsDesc, watchAgeDesc, ttlModeDesc, connectedDesc} {
		ch <- d
	}
}

func (c statsCollector) Collect(ch chan<- prometheus.Metric) {
	connected := 0.0
	if nc := c.m.nc.Load(); nc != nil && nc.IsConnected() {
		connected = 1
	}
	ch <- prometheus.MustNewConstMetric(connectedDesc, prometheus.GaugeValue, connected)
	if mode := c.m.mode.Load(); mode != nil {
		ch <- prometheus.MustNewConstMetric(ttlModeDesc, prometheus.GaugeValue, 1, *mode)
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
	for _, n := range s.Transitions {
		ch <- prometheus.MustNewConstMetric(transitionsDesc, prometheus.CounterValue, float64(n.N), n.Router, n.To, n.Reason)
	}
	ch <- prometheus.MustNewConstMetric(disabledDesc, prometheus.GaugeValue, float64(s.Disabled))
	ch <- prometheus.MustNewConstMetric(kvWritesDesc, prometheus.CounterValue, float64(s.KVWrites))
	ch <- prometheus.MustNewConstMetric(kvErrorsDesc, prometheus.CounterValue, float64(s.KVErrors))
	ch <- prometheus.MustNewConstMetric(watchEventsDesc, prometheus.CounterValue, float64(s.WatchEvents))
	// NaN rather than -1 when nothing has been heard: the bucket only
	// changes when a router fails, so "no event yet" is normal, and NaN
	// makes "age > X" alerts false and leaves a gap in graphs instead of a
	// misleading value.
	age := math.NaN()
	if !s.LastWatch.IsZero() {
		age = time.Since(s.LastWatch).Seconds()
	}
	ch <- prometheus.MustNewConstMetric(watchAgeDesc, prometheus.GaugeValue, age)
}

// The methods Run calls as it starts and stops. Each does nothing on a
// nil monitor, which is what serve has when metrics-addr is empty.

// connected records the connection whose state /readyz and
// broker_nats_connected report.
func (m *monitor) connected(nc *nats.Conn) {
	if m != nil {
		m.nc.Store(nc)
		m.setReason(openingStore)
	}
}

// attached records how disables expire: "ttl", "expiry" or "local".
func (m *monitor) attached(mode string) {
	if m != nil {
		m.mode.Store(&mode)
		m.setReason(loadingView)
	}
}

// started records the broker whose Stats are scraped, and the handler
// that counts malformed messages.
func (m *monitor) started(b *broker.Broker, h *gecholog.Handler) {
	if m != nil {
		m.handler.Store(h)
		m.broker.Store(b)
	}
}

// stage records why the replica is not ready yet; "" marks it ready.
func (m *monitor) stage(reason string) {
	if m != nil {
		m.setReason(reason)
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
