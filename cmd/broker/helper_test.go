package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/kv"
	"github.com/gecholog/broker/replica"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The harness the package's tests share: replicas of the processor run
// in-process, the operator's commands run as an operator runs them, the
// bucket and the status command's output read back, and files to give
// the program. The program itself, run whole (startProgram), and its log
// (logged, logLine) are in main_test.go.

// startReplicas runs n replicas of the processor in-process on s, as serve
// runs them with NATS_URL alone (the default pool) and the given
// DISABLED_TIME, named replica-1 to replica-n, and returns their brokers
// once every one answers calls. They stop when the test ends, before the
// server; when the test fails, each replica's log is shown.
func startReplicas(t *testing.T, s *server.Server, n int, disabled time.Duration) []*broker.Broker {
	t.Helper()
	fleet := startFleet(t, s, n, func(c *replica.Config) { c.Policy.DisabledTime = disabled })
	brokers := make([]*broker.Broker, n)
	for i, r := range fleet.Replicas {
		brokers[i] = r.Broker()
	}
	return brokers
}

// startFleet runs n replicas as startReplicas does, each with the
// settings adjust makes, and returns them.
func startFleet(t *testing.T, s *server.Server, n int, adjust func(c *replica.Config)) *replica.Fleet {
	t.Helper()
	st, err := parseServe(nil, env("NATS_URL", s.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	c := st.replicaConfig(nil)
	adjust(&c)
	c.ID = "" // the fleet names its replicas
	type replicaLog struct {
		id  string
		log *syncBuffer
	}
	var logs []replicaLog // appended to by StartFleet before any replica starts
	t.Cleanup(func() {
		if t.Failed() {
			for _, l := range logs {
				t.Logf("%s logged:\n%s", l.id, l.log)
			}
		}
	})
	fleet, err := replica.StartFleet(context.Background(), c, n, func(id string) *slog.Logger {
		l := &syncBuffer{}
		logs = append(logs, replicaLog{id, l})
		return slog.New(slog.NewJSONHandler(l, nil))
	})
	if err != nil {
		t.Fatalf("start %d replicas: %v", n, err)
	}
	t.Cleanup(func() {
		if err := fleet.Stop(); err != nil {
			t.Errorf("replicas: %v", err)
		}
	})
	// A fleet is started once its replicas hear each other: before, each
	// says it hears fewer, and status, disable and enable, which stop
	// listening once they heard as many as the replicas say, could end
	// on the first word.
	natstest.Eventually(t, 10*time.Second, func() bool {
		for _, r := range fleet.Replicas {
			if r.Broker().Peers() < n-1 {
				return false
			}
		}
		return true
	}, "the %d replicas hearing each other", n)
	return fleet
}

// choosing counts the replicas that would send an /azure/ call to router.
func choosing(bs []*broker.Broker, router string) int {
	n := 0
	for _, b := range bs {
		if slices.Contains(b.Routers("/azure/"), router) {
			n++
		}
	}
	return n
}

// runOp runs the program as an operator would, and returns what it printed.
func runOp(getenv func(string) string, args ...string) (stdout, stderr string, err error) {
	return runOpIn(context.Background(), getenv, args...)
}

// runOpIn runs the program as runOp does, until it returns, 30 s pass or
// ctx ends.
func runOpIn(ctx context.Context, getenv func(string) string, args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var out, errs syncBuffer
	err = run(ctx, args, getenv, &out, &errs)
	return out.String(), errs.String(), err
}

// createBucket creates the bucket as the first replica would.
func createBucket(t *testing.T, js jetstream.JetStream) *kv.Store {
	t.Helper()
	st, err := kv.Open(context.Background(), js, kv.Config{Bucket: "gl_broker"})
	if err != nil {
		t.Fatalf("create bucket: %v", err)
	}
	t.Cleanup(st.Close)
	return st
}

// tableRow finds the status table's line for router.
func tableRow(out, router string) string {
	for line := range strings.Lines(out) {
		if f := strings.Fields(line); len(f) > 1 && f[1] == router {
			return line
		}
	}
	return ""
}

// statusJSON is the rows `broker status --json` prints.
func statusJSON(t *testing.T, getenv func(string) string) []map[string]any {
	t.Helper()
	out, errs, err := runOp(getenv, "status", "--json")
	if err != nil {
		t.Fatalf("status --json: %v\n%s", err, errs)
	}
	var rows []map[string]any
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("status --json printed %q: %v", out, err)
	}
	return rows
}

// jsonRow is router's row of rows, or nil.
func jsonRow(rows []map[string]any, router string) map[string]any {
	for _, r := range rows {
		if r["router"] == router {
			return r
		}
	}
	return nil
}

// repoGLConfigFile is the gl_config.json the compose file mounts into
// gecholog.
const repoGLConfigFile = "../../gl_config.json"

// brokenGLConfig writes a copy of the repository's gl_config.json with
// mutate applied and returns its path.
func brokenGLConfig(t *testing.T, mutate func(m map[string]any)) string {
	t.Helper()
	b, err := os.ReadFile(repoGLConfigFile)
	if err != nil {
		t.Fatalf("read %s: %v", repoGLConfigFile, err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("decode %s: %v", repoGLConfigFile, err)
	}
	mutate(m)
	if b, err = json.MarshalIndent(m, "", "  "); err != nil {
		t.Fatalf("encode: %v", err)
	}
	path := filepath.Join(t.TempDir(), "gl_config.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
	return path
}

// lines are the lines of s, without the last newline.
func lines(s string) []string {
	return strings.Split(strings.TrimRight(s, "\n"), "\n")
}

// writeFile writes data to a file called name in a directory of the
// test's own and returns its path.
func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// says fails the test unless got, the text of what, holds want, and shows
// what it holds when it does not.
func says(t testing.TB, what, got, want string) {
	t.Helper()
	if !strings.Contains(got, want) {
		t.Fatalf("%s does not say %q; it says:\n%s", what, want, got)
	}
}

// saysFirst fails the test unless got, the text of what, starts with want,
// and shows what it holds when it does not.
func saysFirst(t testing.TB, what, got, want string) {
	t.Helper()
	if !strings.HasPrefix(got, want) {
		t.Fatalf("%s does not start with %q; it says:\n%s", what, want, got)
	}
}

// saysLast fails the test unless got, the text of what, ends with want,
// and shows what it holds when it does not.
func saysLast(t testing.TB, what, got, want string) {
	t.Helper()
	if !strings.HasSuffix(got, want) {
		t.Fatalf("%s does not end with %q; it says:\n%s", what, want, got)
	}
}

// neverSays fails the test when got, the text of what, holds unwanted, and
// shows what it holds.
func neverSays(t testing.TB, what, got, unwanted string) {
	t.Helper()
	if strings.Contains(got, unwanted) {
		t.Fatalf("%s says %q; it says:\n%s", what, unwanted, got)
	}
}

// oneLine fails the test unless err is one line, and shows it when it is
// not.
func oneLine(t testing.TB, err error) {
	t.Helper()
	neverSays(t, "the error", err.Error(), "\n")
}

// isErr fails the test unless err is target, and shows the error that
// came when it is not.
func isErr(t testing.TB, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("error %v, want %v", err, target)
	}
}

// metricsReplica is a replica run in-process with its metrics listener on
// a free loopback port.
type metricsReplica struct {
	*program
	addr string // where the metrics listener is, host:port
}

// startMetricsReplica runs serve against natsURL with metrics on and waits
// for its listener. The replica is stopped when the test ends.
func startMetricsReplica(t *testing.T, natsURL string, more ...string) *metricsReplica {
	t.Helper()
	p := startProgram(t, env(append([]string{"NATS_URL", natsURL, "BROKER_METRICS_ADDR", "127.0.0.1:0"}, more...)...))
	l := p.await(t, "metrics listening")
	return &metricsReplica{program: p, addr: l["addr"].(string)}
}

// waitReady waits until every replica's /readyz answers 200.
func waitReady(t *testing.T, replicas ...*metricsReplica) {
	t.Helper()
	for _, r := range replicas {
		natstest.Eventually(t, 10*time.Second, func() bool {
			code, _, err := r.get("/readyz")
			return err == nil && code == http.StatusOK
		}, "replica ready")
	}
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

// replicaStatus is what a replica's /status.json says of how it acts: its
// mode, and the state of each pool's routers in its own view.
type replicaStatus struct {
	Mode  string `json:"mode"`
	Pools []struct {
		Ingress string `json:"ingress"`
		Routers []struct {
			Router, State, By string
		} `json:"routers"`
	} `json:"pools"`
}

// status reads the replica's /status.json.
func (r *metricsReplica) status(t *testing.T) replicaStatus {
	t.Helper()
	code, body, err := r.get("/status.json")
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET %s/status.json: %d %v", r.addr, code, err)
	}
	var st replicaStatus
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("/status.json of %s: %v\n%s", r.addr, err, body)
	}
	return st
}

// awaitRouter waits up to 10 s until the replica acts on router, in every
// pool that has it, as state, written by by ("" for any writer).
func (r *metricsReplica) awaitRouter(t *testing.T, router, state, by string) {
	t.Helper()
	var seen []string // each pool's state of router, and by whom
	natstest.Eventually(t, 10*time.Second, func() bool {
		seen = seen[:0]
		as := true
		for _, p := range r.status(t).Pools {
			for _, x := range p.Routers {
				if x.Router == router {
					seen = append(seen, x.State+" by "+x.By)
					as = as && x.State == state && (by == "" || x.By == by)
				}
			}
		}
		return as && len(seen) > 0
	}, "%s %s by %q in the replica's view; it is %v", router, state, by, &seen)
}

// awaitAnswer waits up to 10 s until a replica answers gecholog's
// request-context call for ingress on nc, and returns the answer.
func awaitAnswer(t *testing.T, nc *nats.Conn, ingress string) string {
	t.Helper()
	var answer string
	natstest.Eventually(t, 10*time.Second, func() bool {
		m, err := nc.Request("coburn.gl.broker", fmt.Appendf(nil, `{"gl_path":%q}`, ingress), time.Second)
		if err == nil {
			answer = string(m.Data)
		}
		return err == nil
	}, "an answer for %s", ingress)
	return answer
}
