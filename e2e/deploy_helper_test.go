package e2e

import (
	"encoding/json"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"go.yaml.in/yaml/v3"
)

// Readers of the deployment files the tests check, as docker compose,
// Docker, gecholog, Prometheus and Grafana read them: docker-compose.yml,
// the Dockerfile and .dockerignore, gl_config.json and the monitoring
// profile's configuration.

// The deployment files live at the repository root, one folder up.
const (
	composeFile    = "../docker-compose.yml"
	glConfigFile   = "../gl_config.json"
	dockerfilePath = "../Dockerfile"
)

// composeEnv stands in for the host environment, so that the tests do not
// depend on what the developer has exported.
var composeEnv = map[string]string{
	"NATS_TOKEN":         "e2e-nats-token",
	"GUI_SECRET":         "e2e-gui-secret",
	"AISERVICE_API_BASE": "https://llm.example.test/",
}

// loadCompose parses docker-compose.yml as docker compose would, with env as
// the only environment.
func loadCompose(t *testing.T, env map[string]string) (*types.Project, error) {
	t.Helper()
	var pairs []string
	for k, v := range env {
		pairs = append(pairs, k+"="+v)
	}
	opts, err := cli.NewProjectOptions(
		[]string{composeFile},
		cli.WithName("gecholog-broker-e2e"),
		cli.WithWorkingDirectory(".."),
		cli.WithEnv(pairs),
	)
	if err != nil {
		return nil, err
	}
	return opts.LoadProject(t.Context())
}

func mustLoadCompose(t *testing.T) *types.Project {
	t.Helper()
	p, err := loadCompose(t, composeEnv)
	if err != nil {
		t.Fatalf("load %s: %v", composeFile, err)
	}
	return p
}

// mountAt returns the service's mount whose target is target.
func mountAt(svc types.ServiceConfig, target string) (types.ServiceVolumeConfig, bool) {
	for _, v := range svc.Volumes {
		if v.Target == target {
			return v, true
		}
	}
	return types.ServiceVolumeConfig{}, false
}

// onNamedVolume reports whether path inside svc lies on one of the
// project's named volumes, i.e. survives the container being recreated.
func onNamedVolume(p *types.Project, svc types.ServiceConfig, path string) bool {
	for _, v := range svc.Volumes {
		if v.Type != types.VolumeTypeVolume {
			continue
		}
		if _, named := p.Volumes[v.Source]; !named {
			continue
		}
		if path == v.Target || strings.HasPrefix(path, strings.TrimSuffix(v.Target, "/")+"/") {
			return true
		}
	}
	return false
}

func env(svc types.ServiceConfig, name string) string {
	v := svc.Environment[name]
	if v == nil {
		return ""
	}
	return *v
}

func published(svc types.ServiceConfig) []string {
	var ports []string
	for _, p := range svc.Ports {
		ports = append(ports, p.Published)
	}
	return ports
}

func repoPath(t *testing.T, rel string) string {
	t.Helper()
	abs, err := filepath.Abs(rel)
	if err != nil {
		t.Fatalf("abs %s: %v", rel, err)
	}
	return abs
}

// entrypoint returns the program the Dockerfile's final stage runs, the
// one binary in the distroless image.
func entrypoint(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(dockerfilePath)
	if err != nil {
		t.Fatalf("read %s: %v", dockerfilePath, err)
	}
	var last string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 1 && strings.EqualFold(f[0], "ENTRYPOINT") {
			last = strings.TrimSpace(line[len(f[0]):])
		}
	}
	var exec []string
	if err := json.Unmarshal([]byte(last), &exec); err != nil || len(exec) == 0 {
		t.Fatalf("%s: the final ENTRYPOINT %q is not in exec form", dockerfilePath, last)
	}
	return exec[0]
}

// glConfig holds the parts of gl_config.json these tests read.
type glConfig struct {
	GatewayID  string `json:"gateway_id"`
	Version    string `json:"version"`
	GLPort     int    `json:"gl_port"`
	ServiceBus struct {
		Hostname         string `json:"hostname"`
		TopicExactLogger string `json:"topic_exact_logger"`
		Token            string `json:"token"`
	} `json:"service_bus"`
	Routers []struct {
		Path     string `json:"path"`
		Outbound struct {
			URL string `json:"url"`
		} `json:"outbound"`
	} `json:"routers"`
	// Processors are layers run in order; a layer's processors run in parallel.
	Request struct {
		Processors [][]glProcessor `json:"processors"`
	} `json:"request"`
	Response struct {
		Processors [][]glProcessor `json:"processors"`
	} `json:"response"`
}

type glProcessor struct {
	Name               string   `json:"name"`
	Modifier           bool     `json:"modifier"`
	Required           bool     `json:"required"`
	Async              bool     `json:"async"`
	InputFieldsInclude []string `json:"input_fields_include"`
	OutputFieldsWrite  []string `json:"output_fields_write"`
	ServiceBusTopic    string   `json:"service_bus_topic"`
	Timeout            int      `json:"timeout"`
}

func readGlConfig(t *testing.T) glConfig {
	t.Helper()
	b, err := os.ReadFile(glConfigFile)
	if err != nil {
		t.Fatalf("read %s: %v", glConfigFile, err)
	}
	var c glConfig
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatalf("decode %s: %v", glConfigFile, err)
	}
	return c
}

// onTopic returns the processors, across all layers, that are called on topic.
func onTopic(layers [][]glProcessor, topic string) []glProcessor {
	var ps []glProcessor
	for _, layer := range layers {
		for _, p := range layer {
			if p.ServiceBusTopic == topic {
				ps = append(ps, p)
			}
		}
	}
	return ps
}

// inContext says whether .dockerignore's patterns let rel into the build
// context: the last pattern that matches rel, or a folder above it,
// decides, and one starting with ! lets it in.
func inContext(patterns []string, rel string) bool {
	in := true
	for _, p := range patterns {
		keep := strings.HasPrefix(p, "!")
		p = strings.TrimSuffix(strings.TrimPrefix(p, "!"), "/")
		if matchesPath(p, rel) {
			in = keep
		}
	}
	return in
}

func matchesPath(pattern, rel string) bool {
	if suffix, ok := strings.CutPrefix(pattern, "**/"); ok {
		parts := strings.Split(rel, "/")
		for i := range parts {
			if matchesPath(suffix, strings.Join(parts[i:], "/")) {
				return true
			}
		}
		return false
	}
	for p := rel; p != "." && p != ""; p = path.Dir(p) {
		if ok, _ := path.Match(pattern, p); ok {
			return true
		}
	}
	return false
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

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
