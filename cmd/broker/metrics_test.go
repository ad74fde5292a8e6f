package main

import (
	"context"
	"io"
	"math"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/gecholog/broker/internal/natstest"
)

// metricsReplica is a replica run in-process with its metrics listener on
// a free loopback port.
type metricsReplica struct {
	*program
	addr string // where the metrics listener is, host:port
}

// startMetricsReplica runs serve against natsURL with metrics on and waits
// for its listener. The replica is stopped when the test ends.
func startMetricsReplica(t *testing.T, natsURL string) *metricsReplica {
	t.Helper()
	p := startProgram(t, env("NATS_URL", natsURL, "BROKER_METRICS_ADDR", "127.0.0.1:0"))
	l := p.await(t, "metrics listening")
	return &metricsReplica{program: p, addr: l["addr"].(string)}
}

// get fetches path from the replica's listener.
func (r *metricsReplica) get(path string) (int, string, error) {
	c := http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + r.addr + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

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
	is.True(err != nil)                                             // the healthcheck fails
	is.True(strings.Contains(err.Error(), "not connected to NATS")) // with the replica's reason
	is.True(!strings.Contains(err.Error(), "\n"))                   // on one line

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
	for _, r := range replicas {
		natstest.Eventually(t, 10*time.Second, func() bool {
			code, _, err := r.get("/readyz")
			return err == nil && code == http.StatusOK
		}, "replica ready")
	}
	nc := natstest.Connect(t, s)

	const requests, failures, successes = 40, 3, 5
	for range requests {
		m, err := nc.Request("coburn.gl.broker", []byte(`{"gl_path":"/azure/"}`), 2*time.Second)
		is.NoErr(err)
		is.True(strings.HasPrefix(string(m.Data), `{"gl_path":"/azure/`)) // a router was chosen
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
			if r.metrics(t).sum("broker_disabled_routers") != 1 {
				return false
			}
		}
		return total("broker_reply_seconds") == calls && total("broker_kv_writes_total") >= 1
	}, "every call timed and the dud disabled on both replicas")

	is.Equal(total("broker_calls_total", "context", "request", "outcome", "chosen"), float64(requests))
	is.Equal(total("broker_calls_total", "context", "response", "outcome", "success"), float64(successes))
	is.Equal(total("broker_calls_total", "context", "response", "outcome", "failure"), float64(failures))
	is.Equal(total("broker_calls_total"), float64(calls))                                                                      // nothing else was counted
	is.Equal(total("broker_choices_total"), float64(requests))                                                                 // one choice per request context
	is.True(total("broker_choices_total", "ingress", "/azure/", "router", "/azure/gpt4/") > 0)                                 // choices are labelled by pool and router
	is.Equal(total("broker_router_transitions_total", "router", "/azure/dud/", "to", "disabled", "reason", "status_502"), 2.0) // one disable in each replica's view
	is.Equal(total("broker_router_transitions_total", "to", "enabled"), 0.0)
	is.Equal(total("broker_kv_errors_total"), 0.0)
	is.True(total("broker_watch_events_total") >= 1)
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
	is.True(err != nil)                                    // the healthcheck fails
	is.True(strings.Contains(err.Error(), addr+"/readyz")) // naming what it asked
	is.True(!strings.Contains(err.Error(), "\n"))          // on one line
}

func TestHealthcheckWithoutAddressSaysWhichSettingIsMissing(t *testing.T) {
	is := is.New(t)
	err := run(context.Background(), []string{"healthcheck"}, env(), io.Discard, io.Discard)
	is.True(err != nil && strings.Contains(err.Error(), "BROKER_METRICS_ADDR"))
}

func TestMetricsAddrInUseStopsStartupNamingIt(t *testing.T) {
	is := is.New(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	is.NoErr(err)
	defer ln.Close()
	err = run(context.Background(), nil, env("BROKER_METRICS_ADDR", ln.Addr().String(), "NATS_URL", "nats://127.0.0.1:1"), io.Discard, io.Discard)
	is.True(err != nil)                                    // startup refused
	is.True(strings.Contains(err.Error(), "metrics-addr")) // the line names the setting
	is.True(!strings.Contains(err.Error(), "\n"))          // one line
}
