package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/gecholog/broker/internal/standin"
	"github.com/gecholog/broker/internal/testutil/natstest"
)

// metrics scrapes /metrics and parses it as Prometheus does.
func (r *metricsReplica) metrics(t *testing.T) families {
	t.Helper()
	code, body, err := r.get("/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("scrape %s: %d %v", r.addr, code, err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fs, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse scrape of %s: %v", r.addr, err)
	}
	return fs
}

type families map[string]*dto.MetricFamily

// sum adds the values of name's series whose labels include the given
// name, value pairs; a histogram adds its observation counts.
func (fs families) sum(name string, labels ...string) float64 {
	f := fs[name]
	if f == nil {
		return 0
	}
	var total float64
series:
	for _, m := range f.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			if !hasLabel(m, labels[i], labels[i+1]) {
				continue series
			}
		}
		switch {
		case m.Counter != nil:
			total += m.GetCounter().GetValue()
		case m.Gauge != nil:
			total += m.GetGauge().GetValue()
		case m.Histogram != nil:
			total += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return total
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}

func TestHealthzAnswersWhileWaitingForNATSAndReadyzSaysWhy(t *testing.T) {
	is := is.New(t)
	r := startMetricsReplica(t, "nats://127.0.0.1:1")

	code, body, err := r.get("/healthz")
	is.NoErr(err)
	is.Equal(code, http.StatusOK) // the process is alive
	is.Equal(body, "ok\n")

	code, body, err = r.get("/readyz")
	is.NoErr(err)
	is.Equal(code, http.StatusServiceUnavailable) // no calls can reach it yet
	is.Equal(body, "not connected to NATS\n")     // and it says why

	fs := r.metrics(t)
	is.Equal(fs.sum("broker_nats_connected"), 0.0)
	is.True(fs["go_goroutines"] != nil) // the Go collector is registered

	err = run(context.Background(), []string{"healthcheck"}, env("BROKER_METRICS_ADDR", r.addr), io.Discard, io.Discard)
	is.True(err != nil)                                        // the healthcheck fails
	says(t, "the error", err.Error(), "not connected to NATS") // with the replica's reason
	oneLine(t, err)                                            // on one line

	is.NoErr(r.stop())
	_, _, err = r.get("/healthz")
	is.True(err != nil) // the listener is closed once serve returns
}

func TestReadyzTurnsReadyOnceServingAndHealthcheckPasses(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	r := startMetricsReplica(t, s.ClientURL())
	natstest.Eventually(t, 10*time.Second, func() bool {
		code, _, err := r.get("/readyz")
		return err == nil && code == http.StatusOK
	}, "readyz 200 once serving")
	_, serving := logLine(r.logs.String(), "serving")
	is.True(serving) // ready only once the subscription is in place

	var out strings.Builder
	is.NoErr(run(context.Background(), []string{"healthcheck"}, env("BROKER_METRICS_ADDR", r.addr), &out, io.Discard))
	is.Equal(out.String(), "ready\n")

	fs := r.metrics(t)
	is.Equal(fs.sum("broker_nats_connected"), 1.0)
	is.Equal(fs.sum("broker_ttl_mode", "mode", "ttl"), 1.0)
	is.Equal(len(fs["broker_ttl_mode"].GetMetric()), 1) // one mode only

	is.NoErr(r.stop())
	_, _, err := r.get("/readyz")
	is.True(err != nil) // the listener is closed once serve returns
}

func TestLocalModeIsReadyAndReportedAsSuch(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t, natstest.WithoutJetStream())
	r := startMetricsReplica(t, s.ClientURL())
	natstest.Eventually(t, 10*time.Second, func() bool {
		code, _, err := r.get("/readyz")
		return err == nil && code == http.StatusOK
	}, "readyz 200 in local mode")
	fs := r.metrics(t)
	is.Equal(fs.sum("broker_ttl_mode", "mode", "local"), 1.0)
	is.True(math.IsNaN(fs.sum("broker_watch_last_event_age_seconds"))) // nothing heard yet
}

func TestMetricsCountTheCallsMadeAcrossReplicas(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	replicas := []*metricsReplica{startMetricsReplica(t, s.ClientURL()), startMetricsReplica(t, s.ClientURL())}
	waitReady(t, replicas...)
	nc := natstest.Connect(t, s)

	const requests, failures, successes = 40, 3, 5
	for range requests {
		m, err := nc.Request("coburn.gl.broker", []byte(`{"gl_path":"/azure/"}`), 2*time.Second)
		is.NoErr(err)
		saysFirst(t, "the answer", string(m.Data), `{"gl_path":"/azure/`) // a router was chosen
	}
	for range successes {
		_, err := nc.Request("coburn.gl.broker", []byte(`{"gl_path":"/azure/gpt4/","egress_status_code":200}`), 2*time.Second)
		is.NoErr(err)
	}
	for range failures {
		_, err := nc.Request("coburn.gl.broker", []byte(`{"gl_path":"/azure/dud/","egress_status_code":502}`), 2*time.Second)
		is.NoErr(err)
	}
	const calls = requests + successes + failures

	// A reply reaches the caller just before its handler observes the
	// time, and disables are written and heard in the background.
	total := func(name string, labels ...string) float64 {
		var n float64
		for _, r := range replicas {
			n += r.metrics(t).sum(name, labels...)
		}
		return n
	}
	natstest.Eventually(t, 5*time.Second, func() bool {
		for _, r := range replicas {
			// The writer hears its own write from its watcher, after it
			// counted the write.
			fs := r.metrics(t)
			if fs.sum("broker_disabled_routers") != 1 || !(fs.sum("broker_watch_last_event_age_seconds") >= 0) {
				return false
			}
		}
		return total("broker_reply_seconds") == calls && total("broker_kv_writes_total") >= 1
	}, "every call timed, the dud disabled on both replicas and their watchers heard the write")

	is.Equal(total("broker_calls_total", "context", "request", "outcome", "chosen"), float64(requests))
	is.Equal(total("broker_calls_total", "context", "response", "outcome", "success"), float64(successes))
	is.Equal(total("broker_calls_total", "context", "response", "outcome", "failure"), float64(failures))
	is.Equal(total("broker_calls_total"), float64(calls))                                                                      // nothing else was counted
	is.Equal(total("broker_choices_total"), float64(requests))                                                                 // one choice per request context
	is.True(total("broker_choices_total", "ingress", "/azure/", "router", "/azure/gpt4/") > 0)                                 // choices are labelled by pool and router
	is.Equal(total("broker_router_transitions_total", "router", "/azure/dud/", "to", "disabled", "reason", "status_502"), 2.0) // one disable in each replica's view
	is.Equal(total("broker_router_transitions_total", "to", "enabled"), 0.0)
	is.Equal(total("broker_kv_errors_total"), 0.0)
	is.True(total("broker_watch_events_total") >= 1)        // the watchers heard the bucket's writes
	is.Equal(total("broker_view_repairs_total"), 0.0)       // nothing the watchers delivered was missed
	is.Equal(total("broker_reply_seconds"), float64(calls)) // one observation per message
	for _, r := range replicas {
		fs := r.metrics(t)
		is.Equal(fs.sum("broker_ttl_mode", "mode", "ttl"), 1.0)
		is.Equal(fs.sum("broker_nats_connected"), 1.0)
		age := fs.sum("broker_watch_last_event_age_seconds")
		is.True(age >= 0 && age < 60)                       // the disable was heard just now
		is.True(fs["process_resident_memory_bytes"] != nil) // the process collector is registered
	}
}

func TestHealthcheckFailsWithOneLineWhenNothingListens(t *testing.T) {
	is := is.New(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	is.NoErr(err)
	addr := ln.Addr().String()
	ln.Close() // a port nothing listens on

	err = run(context.Background(), []string{"healthcheck"}, env("BROKER_METRICS_ADDR", addr), io.Discard, io.Discard)
	is.True(err != nil)                               // the healthcheck fails
	says(t, "the error", err.Error(), addr+"/readyz") // naming what it asked
	oneLine(t, err)                                   // on one line
}

func TestHealthcheckWithoutAddressSaysWhichSettingIsMissing(t *testing.T) {
	is := is.New(t)
	err := run(context.Background(), []string{"healthcheck"}, env(), io.Discard, io.Discard)
	is.True(err != nil)                                      // refused
	says(t, "the error", err.Error(), "BROKER_METRICS_ADDR") // naming the setting
}

func TestMetricsAddrInUseStopsStartupNamingIt(t *testing.T) {
	is := is.New(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	is.NoErr(err)
	defer ln.Close()
	err = run(context.Background(), nil, env("BROKER_METRICS_ADDR", ln.Addr().String(), "NATS_URL", "nats://127.0.0.1:1"), io.Discard, io.Discard)
	is.True(err != nil)                               // startup refused
	says(t, "the error", err.Error(), "metrics-addr") // the line names the setting
	oneLine(t, err)                                   // one line
}

// value is the one series of name with the given labels.
func (fs families) value(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	var found []float64
	for _, m := range fs[name].GetMetric() {
		ok := true
		for i := 0; i+1 < len(labels); i += 2 {
			ok = ok && hasLabel(m, labels[i], labels[i+1])
		}
		if ok {
			found = append(found, m.GetGauge().GetValue())
		}
	}
	if len(found) != 1 {
		t.Fatalf("%s%q: %d series, want 1", name, labels, len(found))
	}
	return found[0]
}

// What the strategies and the failure-rate rule read is on /metrics, per
// pool router, the same on every replica: the tier, the calls in flight
// over the fleet, the share of choices, the latency and headroom
// gecholog's transaction log told, and the fleet's recent calls and
// failure rate.
func TestMetricsShowWhatTheStrategiesAndTheFailureRateRead(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	pools := filepath.Join(t.TempDir(), "pools.json")
	is.NoErr(os.WriteFile(pools, []byte(`{"pools":[{"ingress":"/azure/","strategy":"least-busy","routers":[
		{"path":"/azure/gpt4/"},{"path":"/azure/gpt35turbo/"},{"path":"/azure/dud/","priority":1}]}]}`), 0o600))
	more := []string{"BROKER_POOLS", pools, "BROKER_FAILURE_RATE", "50", "BROKER_FAILURE_THRESHOLD", "100"}
	// Two replicas in one process: the default ID, host:pid, would be
	// the same.
	replicas := []*metricsReplica{startMetricsReplica(t, s.ClientURL(), append(more, "BROKER_ID", "replica-1")...),
		startMetricsReplica(t, s.ClientURL(), append(more, "BROKER_ID", "replica-2")...)}
	waitReady(t, replicas...)
	nc := natstest.Connect(t, s)
	// 6 calls chosen through the queue group and none reported: in flight.
	for range 6 {
		_, err := nc.Request("coburn.gl.broker", []byte(`{"gl_path":"/azure/"}`), 2*time.Second)
		is.NoErr(err)
	}
	// The dud's calls: 1 of 4 failed, fleet-wide.
	for _, status := range []int{200, 502, 200, 200} {
		_, err := nc.Request("coburn.gl.broker", fmt.Appendf(nil, `{"gl_path":"/azure/dud/","egress_status_code":%d}`, status), 2*time.Second)
		is.NoErr(err)
	}
	// gpt4's upstream took 40 ms and has 30 of its 120 requests left.
	is.NoErr(nc.Publish("coburn.gl.logger", standin.Transaction(standin.Finished{Ingress: "/azure/", Router: "/azure/gpt4/",
		Latency: 40 * time.Millisecond, Headers: map[string]string{"x-ratelimit-remaining-requests": "30", "x-ratelimit-limit-requests": "120"}})))

	lbl := func(router string) []string { return []string{"ingress", "/azure/", "router", router} }
	for _, r := range replicas {
		natstest.Eventually(t, 2*time.Second, func() bool {
			fs := r.metrics(t)
			return fs.value(t, "broker_router_in_flight", lbl("/azure/gpt4/")...)+fs.value(t, "broker_router_in_flight", lbl("/azure/gpt35turbo/")...) == 6 &&
				fs.value(t, "broker_router_recent_calls", lbl("/azure/dud/")...) == 4 &&
				!math.IsNaN(fs.value(t, "broker_router_latency_seconds", lbl("/azure/gpt4/")...)) &&
				fs.sum("broker_transactions_total", "outcome", "read")+fs.sum("broker_transactions_total", "outcome", "shared") == 1
		}, "both replicas count every call")
		fs := r.metrics(t)
		is.Equal(fs.value(t, "broker_router_priority", lbl("/azure/dud/")...), 1.0) // the tier
		is.Equal(fs.value(t, "broker_router_priority", lbl("/azure/gpt4/")...), 0.0)
		is.Equal(fs.value(t, "broker_router_in_flight", lbl("/azure/dud/")...), 0.0) // reports only: none in flight
		is.Equal(fs.value(t, "broker_router_share_ratio", lbl("/azure/gpt4/")...)+fs.value(t, "broker_router_share_ratio", lbl("/azure/gpt35turbo/")...), 1.0)
		is.Equal(fs.value(t, "broker_router_latency_seconds", lbl("/azure/gpt4/")...), 0.04)
		is.True(math.IsNaN(fs.value(t, "broker_router_latency_seconds", lbl("/azure/gpt35turbo/")...))) // never heard of: NaN
		is.Equal(fs.value(t, "broker_router_headroom_ratio", lbl("/azure/gpt4/")...), 0.25)
		is.True(math.IsNaN(fs.value(t, "broker_router_headroom_ratio", lbl("/azure/gpt35turbo/")...))) // never heard of: NaN
		is.Equal(fs.value(t, "broker_router_failure_rate_ratio", lbl("/azure/dud/")...), 0.25)
		is.True(math.IsNaN(fs.value(t, "broker_router_failure_rate_ratio", lbl("/azure/gpt4/")...)))                                   // no calls: NaN
		is.Equal(fs.sum("broker_transactions_total", "outcome", "read")+fs.sum("broker_transactions_total", "outcome", "shared"), 1.0) // the transaction, heard by each replica: read, or told by the other
		is.Equal(fs.sum("broker_transactions_total"), 1.0)                                                                             // and nothing dropped or unreadable
		age := fs.sum("broker_transaction_log_last_heard_age_seconds")
		is.True(age >= 0 && age < 10) // the transaction was heard just now
	}
}
