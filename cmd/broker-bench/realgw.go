package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/gecholog"
	"github.com/gecholog/broker/internal/testutil/natstest"
)

// The real gecholog gateway, gl, run as a process in front of the
// replica processes (-gl PATH): the bench writes its gl_config.json, starts
// it on the bench's NATS server, and the callers are plain HTTP clients of
// its ingress paths. gl is not part of this module: the user builds it
// from github.com/direktoren/gecholog (cmd/gl) and gives its path.

// glGateway is a running gl process.
type glGateway struct {
	cmd  *exec.Cmd
	dir  string // its configuration's folder, removed by stop
	base string // http://127.0.0.1:PORT
	done chan struct{}

	mu       sync.Mutex
	last     string // the last error or warning it logged
	failures map[string]int
	ended    bool
}

// glStartTimeout bounds gl's start: its NATS connection, its routers, its
// HTTP listener and its isalive subscription.
const glStartTimeout = 30 * time.Second

// glProcessorFailures are the messages gl logs when a processor call was
// not answered within its timeout (or failed): the request context's, after
// which the call goes to the ingress router's own outbound, and the
// response context's, after which the broker never hears the call ended.
var glProcessorFailures = []string{"failed request processor", "failed response processor"}

// glRouter is one router of gl_config.json.
type glRouter struct {
	Path    string `json:"path"`
	Ingress struct {
		Headers map[string][]string `json:"headers"`
	} `json:"ingress"`
	Outbound struct {
		URL      string              `json:"url"`
		Endpoint string              `json:"endpoint"`
		Headers  map[string][]string `json:"headers"`
	} `json:"outbound"`
}

// glProcessor is one processor entry of gl_config.json.
type glProcessor struct {
	Name     string   `json:"name"`
	Modifier bool     `json:"modifier"`
	Required bool     `json:"required"`
	Async    bool     `json:"async"`
	Include  []string `json:"input_fields_include"`
	Exclude  []string `json:"input_fields_exclude"`
	Output   []string `json:"output_fields_write"`
	Topic    string   `json:"service_bus_topic"`
	Timeout  int      `json:"timeout"`
}

// glConfig is the gl_config.json the bench runs gl with: the repository's
// own (gl_config.json at the module's root) but for the routers, the
// subjects, the port and the processors' timeout. upstreams gives each
// router's (and each ingress's) outbound URL.
func (b *bench) glConfig(pools []broker.Pool, upstreams map[string]string, natsHost string, port int) ([]byte, error) {
	jsonCT := map[string][]string{"Content-Type": {"application/json"}}
	var routers []glRouter
	add := func(path string) error {
		u, ok := upstreams[path]
		if !ok {
			return fmt.Errorf("no upstream for router %s", path)
		}
		var r glRouter
		r.Path = path
		r.Ingress.Headers = jsonCT
		r.Outbound.URL = u
		r.Outbound.Headers = jsonCT
		routers = append(routers, r)
		return nil
	}
	for _, p := range pools {
		if err := add(p.Ingress); err != nil {
			return nil, err
		}
		for _, r := range p.Routers {
			if err := add(r.Path); err != nil {
				return nil, err
			}
		}
	}
	timeout := int(max(b.o.timeout/time.Millisecond, 1))
	base := strings.TrimSuffix(b.subject, ".broker")
	cfg := map[string]any{
		"gateway_id": "BENCH001",
		"version":    "1.0.1",
		"log_level":  "WARN", // gl's processor failures are errors; each call's lines are info
		"tls": map[string]any{
			"ingress":  map[string]any{"enabled": false, "certificate_file": "", "private_key_file": ""},
			"outbound": map[string]any{"insecure": false, "system_cert_pool": true, "cert_files": []string{}},
		},
		"service_bus": map[string]any{
			"hostname":            natsHost,
			"topic":               base + ".gecholog",
			"topic_exact_isalive": base + ".isalive",
			"topic_exact_logger":  b.loggerSubject(),
			"token":               "${NATS_TOKEN}",
		},
		"gl_port":           port,
		"session_id_header": "Session-Id",
		"masked_headers":    []string{"Authorization", "Api-Key"},
		"remove_headers":    []string{"Content-Length"},
		"routers":           routers,
		"request": map[string]any{"processors": [][]glProcessor{{{
			Name: "broker", Modifier: true, Include: []string{"gl_path"}, Exclude: []string{},
			Output: []string{"gl_path"}, Topic: b.subject, Timeout: timeout}}}},
		"response": map[string]any{"processors": [][]glProcessor{{{
			Name: "broker", Async: true, Include: []string{"gl_path", "egress_status_code", "inbound_headers"},
			Exclude: []string{}, Output: []string{}, Topic: b.subject, Timeout: timeout}}}},
		"logger": map[string]any{
			"request":  map[string]any{"fields_include": []string{}, "fields_exclude": []string{}},
			"response": map[string]any{"fields_include": []string{}, "fields_exclude": []string{}},
		},
	}
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, err
	}
	// The broker's own check of a gl_config.json: the bench wires gl as
	// the docs tell an operator to.
	problems, err := gecholog.CheckGLConfig(bytes.NewReader(data), pools,
		gecholog.Wiring{Subject: b.subject, LoggerSubject: b.loggerSubject(), RetryAfter: true})
	if err != nil {
		return nil, fmt.Errorf("check the bench's gl_config.json: %w", err)
	}
	for _, p := range problems {
		if !p.Advice {
			return nil, fmt.Errorf("the bench's gl_config.json: %s", p)
		}
	}
	return data, nil
}

// freePort is a loopback port free a moment ago. gl takes only a port
// (gl_port) and listens on every address: run the bench in a network
// namespace of its own (docs/performance.md) to keep it on loopback.
func freePort() (int, error) {
	ports, err := natstest.FreePorts(1)
	if err != nil {
		return 0, err
	}
	return ports[0], nil
}

// natsHostPort is the host:port gl's service_bus.hostname takes, from the
// bench's server URL (its first, when it lists several).
func natsHostPort(servers string) (string, error) {
	s := strings.TrimSpace(strings.Split(servers, ",")[0])
	if !strings.Contains(s, "://") {
		s = "nats://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", err
	}
	return u.Host, nil
}

// startGL runs gl at path on the bench's server with the routers of pools
// and their upstreams, and returns once it answers on the bus and listens.
func (b *bench) startGL(ctx context.Context, nc *nats.Conn, path string, pools []broker.Pool, upstreams map[string]string) (*glGateway, error) {
	host, err := natsHostPort(b.url)
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	cfg, err := b.glConfig(pools, upstreams, host, port)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "broker-bench-gl-")
	if err != nil {
		return nil, err
	}
	file := filepath.Join(dir, "gl_config.json")
	if err := os.WriteFile(file, cfg, 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	// -a names its checksum file, /app/checksum/.ALIAS_config.sha256: a
	// name of the bench's own leaves a gl running beside it alone.
	alias := "glbench" + strings.TrimPrefix(strings.TrimSuffix(b.subject, ".broker"), "bench.")
	cmd := exec.Command(path, "-o", file, "-a", alias)
	for _, k := range []string{"PATH", "HOME", "TMPDIR"} {
		if v, ok := os.LookupEnv(k); ok {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
	}
	// gl refuses an empty token; a server without authorization ignores
	// the one it sends.
	cmd.Env = append(cmd.Env, "NATS_TOKEN="+max(b.o.token, "none"))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	cmd.Stderr = cmd.Stdout // one stream: a panic lands with its log
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start gl %s: %w", path, err)
	}
	g := &glGateway{cmd: cmd, dir: dir, base: fmt.Sprintf("http://127.0.0.1:%d", port), done: make(chan struct{}),
		failures: map[string]int{}}
	go func() {
		defer close(g.done)
		g.read(stdout)
		_ = cmd.Wait()
	}()
	if err := g.waitReady(ctx, nc, strings.TrimSuffix(b.subject, ".broker")+".isalive", port); err != nil {
		g.stop()
		return nil, err
	}
	return g, nil
}

// read follows gl's log (JSON lines on stdout) until it ends.
func (g *glGateway) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxLogLine)
	for sc.Scan() {
		var l struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
			Error any    `json:"error"`
		}
		line := sc.Text()
		if json.Unmarshal([]byte(line), &l) != nil {
			l.Level, l.Msg = "ERROR", line
		}
		g.mu.Lock()
		for _, f := range glProcessorFailures {
			if l.Msg == f {
				g.failures[f]++
			}
		}
		if l.Level == "ERROR" || l.Level == "WARN" {
			g.last = strings.TrimSpace(fmt.Sprintf("%s %v", l.Msg, cmpOrNil(l.Error)))
		}
		g.mu.Unlock()
	}
	_, _ = io.Copy(io.Discard, r)
	g.mu.Lock()
	g.ended = true
	g.mu.Unlock()
}

func cmpOrNil(v any) any {
	if v == nil {
		return ""
	}
	return v
}

// waitReady waits until gl answers on its isalive subject (it subscribes
// after starting its HTTP server) and its port takes connections.
func (g *glGateway) waitReady(ctx context.Context, nc *nats.Conn, isalive string, port int) error {
	deadline := time.Now().Add(glStartTimeout)
	for {
		select {
		case <-g.done:
			g.mu.Lock()
			defer g.mu.Unlock()
			hint := ""
			if strings.Contains(g.last, "checksum") {
				hint = " (gl writes a checksum file in /app/checksum, as in gecholog's container, and exits when it cannot: create that folder first)"
			}
			return fmt.Errorf("gl exited before it served: %s%s", g.last, hint)
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if time.Now().After(deadline) {
			g.mu.Lock()
			defer g.mu.Unlock()
			return fmt.Errorf("gl did not serve within %v: %s", glStartTimeout, g.last)
		}
		if _, err := nc.Request(isalive, nil, 200*time.Millisecond); err == nil {
			if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second); err == nil {
				c.Close()
				// gl writes its checksum file just after: a failure there
				// ends it at once, so give it that moment.
				select {
				case <-g.done:
					continue
				case <-time.After(200 * time.Millisecond):
					return nil
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// processorFailures is how many processor calls gl has logged as failed.
func (g *glGateway) processorFailures() (request, response int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.failures[glProcessorFailures[0]], g.failures[glProcessorFailures[1]]
}

// stop ends gl as Ctrl-C does (it removes its checksum file on SIGINT
// only), waits for it, and removes its configuration.
func (g *glGateway) stop() {
	_ = g.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-g.done:
	case <-time.After(10 * time.Second):
		_ = g.cmd.Process.Kill()
		<-g.done
	}
	os.RemoveAll(g.dir)
}

// glCallBody is each client call's payload.
var glCallBody = []byte(`{"messages":[{"role":"user","content":"Say ok."}]}`)

// call makes one client call to gl's ingress and returns the status the
// client got.
func (g *glGateway) call(ctx context.Context, client *http.Client, ingress string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, g.base+ingress, bytes.NewReader(glCallBody))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	_, err = io.Copy(io.Discard, resp.Body) // to the end, so that the connection is used again
	resp.Body.Close()
	return resp.StatusCode, err
}

// run makes n client calls to ingress, callers at once, each caller making
// its calls one after the other, and passes each status to each.
func (g *glGateway) run(ctx context.Context, client *http.Client, ingress string, n, callers int, each func(status int, err error)) {
	var mu sync.Mutex
	left := n
	var wg sync.WaitGroup
	for range max(min(callers, n), 1) {
		wg.Go(func() {
			for ctx.Err() == nil {
				mu.Lock()
				if left == 0 {
					mu.Unlock()
					return
				}
				left--
				mu.Unlock()
				status, err := g.call(ctx, client, ingress)
				if err != nil && ctx.Err() != nil {
					return
				}
				each(status, err)
			}
		})
	}
	wg.Wait()
}
