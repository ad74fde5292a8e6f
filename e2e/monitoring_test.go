package e2e

import (
	"net"
	"net/url"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/types"
	"github.com/matryer/is"

	"github.com/gecholog/broker/internal/testutil/natstest"
)

func TestComposeMonitoringProfileScrapesEveryReplicaAndShowsTheDashboard(t *testing.T) {
	is := is.New(t)
	plain := mustLoadCompose(t)
	_, ok := plain.Services["prometheus"]
	is.True(!ok) // without the profile, no Prometheus
	_, ok = plain.Services["grafana"]
	is.True(!ok) // and no Grafana

	p := loadComposeProfiles(t, "monitoring")
	prom, ok := p.Services["prometheus"]
	is.True(ok) // the monitoring profile has a prometheus service
	graf, ok := p.Services["grafana"]
	is.True(ok) // and a grafana service
	brokerSvc := p.Services["broker"]
	for _, svc := range []types.ServiceConfig{prom, graf} {
		is.True(slices.Contains(svc.Profiles, "monitoring")) // only in the monitoring profile
	}
	is.True(strings.HasPrefix(prom.Image, "prom/prometheus:")) // the official image
	is.True(strings.HasPrefix(graf.Image, "grafana/grafana:")) // the official image

	t.Run("prometheus scrapes every broker replica", func(t *testing.T) {
		is := is.New(t)
		m, ok := mountAt(prom, "/etc/prometheus/prometheus.yml")
		is.True(ok)                                       // a scrape config is mounted where Prometheus reads it
		is.Equal(m.Source, repoPath(t, prometheusConfig)) // the repository's scrape config
		if !slices.Contains([]string(prom.Command), "--config.file=/etc/prometheus/prometheus.yml") {
			t.Fatalf("prometheus runs %q, without --config.file=/etc/prometheus/prometheus.yml", prom.Command)
		}
		var c promConfig
		readYAML(t, prometheusConfig, &c)
		_, port, err := net.SplitHostPort(env(brokerSvc, "BROKER_METRICS_ADDR"))
		is.NoErr(err)
		found := false
		for _, sc := range c.ScrapeConfigs {
			is.Equal(len(sc.StaticConfigs), 0) // a fixed target would find one replica, not every one
			for _, d := range sc.DNSSDConfigs {
				if slices.Contains(d.Names, "broker") {
					found = true
					is.Equal(d.Type, "A")                                         // every replica's address
					is.Equal(strconv.Itoa(d.Port), port)                          // on the port the replicas listen on
					is.True(sc.MetricsPath == "" || sc.MetricsPath == "/metrics") // the path the replicas serve
				}
			}
		}
		is.True(found) // a scrape job finds the replicas through Docker's DNS for the broker service
	})

	t.Run("grafana is provisioned with the data source and the dashboard", func(t *testing.T) {
		is := is.New(t)
		ds, ok := mountAt(graf, "/etc/grafana/provisioning/datasources")
		is.True(ok) // data sources are mounted where Grafana provisions them from
		is.Equal(ds.Source, repoPath(t, filepath.Join(grafanaDir, "provisioning/datasources")))
		dp, ok := mountAt(graf, "/etc/grafana/provisioning/dashboards")
		is.True(ok) // and dashboard providers
		is.Equal(dp.Source, repoPath(t, filepath.Join(grafanaDir, "provisioning/dashboards")))

		var sources grafanaDatasources
		readYAML(t, filepath.Join(grafanaDir, "provisioning/datasources/prometheus.yml"), &sources)
		is.Equal(len(sources.Datasources), 1)
		src := sources.Datasources[0]
		is.Equal(src.Type, "prometheus")
		u, err := url.Parse(src.URL)
		is.NoErr(err)
		is.Equal(u.Hostname(), "prometheus") // the compose service
		is.Equal(u.Port(), "9090")           // Prometheus's own port inside the network

		var providers grafanaProviders
		readYAML(t, filepath.Join(grafanaDir, "provisioning/dashboards/broker.yml"), &providers)
		is.Equal(len(providers.Providers), 1)
		dash, ok := mountAt(graf, providers.Providers[0].Options.Path)
		is.True(ok) // the folder the provider reads is mounted
		is.Equal(dash.Source, repoPath(t, filepath.Dir(dashboardFile)))
		home := env(graf, "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
		is.Equal(home, filepath.Join(dash.Target, filepath.Base(dashboardFile))) // the dashboard is Grafana's home page

		d := readDashboard(t)
		if len(d.queries) <= 5 {
			t.Fatalf("the dashboard holds %d queries, too few to be the dashboard: %q", len(d.queries), d.queries)
		}
		for _, uid := range d.datasources {
			is.Equal(uid, src.UID) // every panel and query uses the provisioned data source
		}
	})
}

func TestMetricNamesAreReadFromQueries(t *testing.T) {
	is := is.New(t)
	is.Equal(metricNames(`histogram_quantile(0.99, sum by (le) (rate(broker_reply_seconds_bucket{instance=~"$instance"}[$__rate_interval])))`),
		[]string{"broker_reply_seconds_bucket"})
	is.Equal(metricNames(`max by (router, to) (increase(broker_router_transitions_total{to=~"disabled|manual"}[5m])) / on(instance) group_left up`),
		[]string{"broker_router_transitions_total", "up"})
	is.Equal(metricNames(`label_values(broker_nats_connected, instance)`), []string{"broker_nats_connected"})
	is.Equal(metricNames(`count(broker_nats_connected{instance=~"$instance"}) > 0 and broker_ttl_mode`), []string{"broker_nats_connected", "broker_ttl_mode"})
}

func TestEveryMetricTheDashboardQueriesIsInARealScrapeOfAReplica(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	// The original's pool, with a price and a budget, so that the spend
	// and budget series exist.
	pools := poolsFile(t, `{"pools":[{"ingress":"/azure/","routers":[{"path":"/azure/gpt35turbo/"},
		{"path":"/azure/gpt4/","price":{"input":2.5,"output":10},"budget":{"spend_per_day":1000}},{"path":"/azure/dud/"}]}]}`)
	r := startReplica(t, replicaEnv(s, "replica-1", "BROKER_POOLS", pools))
	// Calls as gecholog makes them, so that every labelled series exists:
	// choices, a failure report and the disable it causes.
	g := newGateway(t, s)
	g.routes(t, 20)
	is.NoErr(g.report("/azure/dud/", 502))
	r.waitState(t, 5*time.Second, "/azure/dud/", "disabled")

	body := r.get(t, "/metrics")
	exported := map[string]bool{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		exported[promName.FindString(line)] = true // a sample's name, histogram suffixes included
	}

	// State per router: the value is the state.
	is.True(strings.Contains(string(body), `broker_router_state{ingress="/azure/",router="/azure/dud/"} 1`+"\n"))  // disabled
	is.True(strings.Contains(string(body), `broker_router_state{ingress="/azure/",router="/azure/gpt4/"} 0`+"\n")) // enabled
	// Failure reports by status.
	is.True(strings.Contains(string(body), `broker_failure_reports_total{router="/azure/dud/",status="502"} 1`+"\n")) // one failure report of a 502

	d := readDashboard(t)
	used := map[string]bool{}
	for _, q := range d.queries {
		names := metricNames(q)
		is.True(len(names) > 0) // every query reads a metric
		for _, n := range names {
			used[n] = true
		}
	}
	var missing, names []string
	for n := range used {
		names = append(names, n)
		if !exported[n] {
			missing = append(missing, n)
		}
	}
	sort.Strings(names)
	t.Logf("the dashboard queries %d metrics: %v", len(names), names)
	if len(missing) > 0 {
		sort.Strings(missing)
		t.Errorf("the dashboard queries metrics a replica does not export: %v", missing)
	}
	is.True(used["broker_router_state"])             // state per router
	is.True(used["broker_choices_total"])            // choices per router
	is.True(used["broker_kv_errors_total"])          // KV write errors
	is.True(used["broker_router_transitions_total"]) // disables and enables
	is.True(used["broker_failure_reports_total"])    // failure reports by status
	is.True(used["broker_router_in_flight"])         // what the strategies read
	is.True(used["broker_router_latency_seconds"])   // what the strategies read
	is.True(used["broker_spend_total"])              // spend per router
	is.True(used["broker_tokens_total"])             // tokens per router
	is.True(used["broker_budget_used"])              // budget used per router
}
