package e2e

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/matryer/is"
	"go.yaml.in/yaml/v3"

	"github.com/gecholog/broker/internal/natstest"
)

// The monitoring profile's files, from the repository root.
const (
	prometheusConfig = "../monitoring/prometheus.yml"
	grafanaDir       = "../monitoring/grafana"
	dashboardFile    = "../monitoring/grafana/dashboards/broker.json"
)

// loadComposeProfiles parses docker-compose.yml as docker compose would
// with --profile for each of profiles.
func loadComposeProfiles(t *testing.T, profiles ...string) *types.Project {
	t.Helper()
	var pairs []string
	for k, v := range composeEnv {
		pairs = append(pairs, k+"="+v)
	}
	opts, err := cli.NewProjectOptions([]string{composeFile},
		cli.WithName("gecholog-broker-e2e"), cli.WithWorkingDirectory(".."), cli.WithEnv(pairs), cli.WithProfiles(profiles))
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(t.Context())
	if err != nil {
		t.Fatalf("load %s with profiles %v: %v", composeFile, profiles, err)
	}
	return p
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// The parts of Prometheus's configuration the test reads.
type promConfig struct {
	ScrapeConfigs []struct {
		JobName       string `yaml:"job_name"`
		MetricsPath   string `yaml:"metrics_path"`
		StaticConfigs []any  `yaml:"static_configs"`
		DNSSDConfigs  []struct {
			Names []string `yaml:"names"`
			Type  string   `yaml:"type"`
			Port  int      `yaml:"port"`
		} `yaml:"dns_sd_configs"`
	} `yaml:"scrape_configs"`
}

// The parts of Grafana's provisioning files the test reads.
type grafanaDatasources struct {
	Datasources []struct {
		UID  string `yaml:"uid"`
		Type string `yaml:"type"`
		URL  string `yaml:"url"`
	} `yaml:"datasources"`
}

type grafanaProviders struct {
	Providers []struct {
		Type    string `yaml:"type"`
		Options struct {
			Path string `yaml:"path"`
		} `yaml:"options"`
	} `yaml:"providers"`
}

func TestComposeMonitoringProfileScrapesEveryReplicaAndShowsTheDashboard(t *testing.T) {
	is := is.New(t)
	plain := mustLoadCompose(t)
	_, ok := plain.Services["prometheus"]
	is.True(!ok) // without the profile, no Prometheus
	_, ok = plain.Services["grafana"]
	is.True(!ok) // and no Grafana

	p := loadComposeProfiles(t, "monitoring")
	prom, ok := p.Services["prometheus"]
	is.True(ok)
	graf, ok := p.Services["grafana"]
	is.True(ok)
	brokerSvc := p.Services["broker"]
	for _, svc := range []types.ServiceConfig{prom, graf} {
		is.True(slices.Contains(svc.Profiles, "monitoring")) // only in the monitoring profile
	}
	is.True(strings.HasPrefix(prom.Image, "prom/prometheus:")) // the official image
	is.True(strings.HasPrefix(graf.Image, "grafana/grafana:")) // the official image

	t.Run("prometheus scrapes every broker replica", func(t *testing.T) {
		is := is.New(t)
		m, ok := mountAt(prom, "/etc/prometheus/prometheus.yml")
		is.True(ok)
		is.Equal(m.Source, repoPath(t, prometheusConfig)) // the repository's scrape config
		is.True(slices.Contains([]string(prom.Command), "--config.file=/etc/prometheus/prometheus.yml"))
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
					is.Equal(d.Type, "A")                // every replica's address
					is.Equal(strconv.Itoa(d.Port), port) // on the port the replicas listen on
					is.True(sc.MetricsPath == "" || sc.MetricsPath == "/metrics")
				}
			}
		}
		is.True(found) // a scrape job finds the replicas through Docker's DNS for the broker service
	})

	t.Run("grafana is provisioned with the data source and the dashboard", func(t *testing.T) {
		is := is.New(t)
		ds, ok := mountAt(graf, "/etc/grafana/provisioning/datasources")
		is.True(ok)
		is.Equal(ds.Source, repoPath(t, filepath.Join(grafanaDir, "provisioning/datasources")))
		dp, ok := mountAt(graf, "/etc/grafana/provisioning/dashboards")
		is.True(ok)
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
		is.True(len(d.queries) > 5)
		for _, uid := range d.datasources {
			is.Equal(uid, src.UID) // every panel and query uses the provisioned data source
		}
	})
}

// dashboard is what the test reads of the dashboard: the uid of every data
// source named, and every query.
type dashboard struct {
	datasources []string
	queries     []string
}

func readDashboard(t *testing.T) dashboard {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	var d dashboard
	// Walk everything: panels, their targets and the template variables.
	var walk func(any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if ds, ok := v["datasource"].(map[string]any); ok {
				d.datasources = append(d.datasources, ds["uid"].(string))
			}
			if e, ok := v["expr"].(string); ok {
				d.queries = append(d.queries, e)
			}
			if q, ok := v["query"].(map[string]any); ok {
				if s, ok := q["query"].(string); ok {
					d.queries = append(d.queries, s)
				}
			}
			for _, c := range v {
				walk(c)
			}
		case []any:
			for _, c := range v {
				walk(c)
			}
		}
	}
	walk(v)
	return d
}

var (
	promString   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	promMatchers = regexp.MustCompile(`\{[^}]*\}`)
	promRange    = regexp.MustCompile(`\[[^\]]*\]`)
	promGrouping = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promName     = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	promKeywords = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true, "by": true, "without": true,
		"on": true, "ignoring": true, "group_left": true, "group_right": true, "inf": true, "nan": true}
)

// metricNames returns the metric names a PromQL query (or a Grafana
// label_values query) reads: the names that are not functions, keywords,
// labels or Grafana's variables.
func metricNames(query string) []string {
	q := promString.ReplaceAllString(query, `""`)
	q = promMatchers.ReplaceAllString(q, " ")
	q = promRange.ReplaceAllString(q, " ")
	q = promGrouping.ReplaceAllString(q, " ")
	if inner, ok := strings.CutPrefix(strings.TrimSpace(q), "label_values("); ok {
		q = strings.SplitN(inner, ",", 2)[0] // label_values(metric, label)
	}
	var names []string
	for _, loc := range promName.FindAllStringIndex(q, -1) {
		name := q[loc[0]:loc[1]]
		rest := strings.TrimSpace(q[loc[1]:])
		switch {
		case loc[0] > 0 && q[loc[0]-1] == '$': // a Grafana variable
		case strings.HasPrefix(rest, "("): // a function
		case promKeywords[strings.ToLower(name)]:
		default:
			names = append(names, name)
		}
	}
	return names
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
	r := startReplica(t, replicaEnv(s, "replica-1", "BROKER_METRICS_ADDR", "127.0.0.1:0"))
	addr := r.waitFor(t, time.Second, logged("metrics listening")).attrs["addr"]
	// Calls as gecholog makes them, so that every labelled series exists:
	// choices, a failure report and the disable it causes.
	g := newGateway(t, s)
	g.routes(t, 20)
	is.NoErr(g.report("/azure/dud/", 502))
	r.waitFor(t, 5*time.Second, logged("router disabled", "router", "/azure/dud/"))

	client := &http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get("http://" + addr + "/metrics")
	is.NoErr(err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	is.NoErr(err)
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
	is.True(strings.Contains(string(body), `broker_failure_reports_total{router="/azure/dud/",status="502"} 1`+"\n"))

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
	is.True(used["broker_router_state"])  // state per router
	is.True(used["broker_choices_total"]) // choices per router
	is.True(used["broker_kv_errors_total"])
	is.True(used["broker_router_transitions_total"])
	is.True(used["broker_failure_reports_total"]) // failure reports by status
	is.True(used["broker_router_in_flight"])      // what the strategies read
	is.True(used["broker_router_latency_seconds"])
}
