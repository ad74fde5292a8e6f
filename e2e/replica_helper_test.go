package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/gecholog/broker/internal/testutil/natstest"
)

// A replica process as the tests see it: started with an environment of
// its own, stopped by signals, heard through its log, and asked what it
// acts on through its metrics listener (/status.json, /metrics).

// replicaEnv is the environment of a replica serving on s, with the logs in
// JSON and a metrics listener on a loopback port of its own; more are extra
// name, value pairs.
func replicaEnv(s *server.Server, id string, more ...string) map[string]string {
	env := map[string]string{
		"NATS_URL":          s.ClientURL(),
		"BROKER_ID":         id,
		"BROKER_LOG_FORMAT": "json",
		"BROKER_LOG_LEVEL":  "info",
		// The listener lets a test wait on what the replica acts on
		// (/status.json, /metrics) rather than on how it words its log.
		"BROKER_METRICS_ADDR": "127.0.0.1:0",
		// The race runtime waits a second at exit by default, which each
		// stopped replica would add to the test's time.
		"GORACE": "atexit_sleep_ms=0",
	}
	for i := 0; i+1 < len(more); i += 2 {
		env[more[i]] = more[i+1]
	}
	return env
}

// startReplicas starts n replicas on s at once and waits until all serve.
func startReplicas(t *testing.T, s *server.Server, n int, more ...string) []*replica {
	t.Helper()
	rs := make([]*replica, n)
	for i := range rs {
		rs[i] = spawnReplica(t, replicaEnv(s, fmt.Sprintf("replica-%d", i+1), more...))
	}
	for _, r := range rs {
		r.waitServing(t)
	}
	return rs
}

func startReplica(t *testing.T, env map[string]string, opts ...replicaOption) *replica {
	t.Helper()
	r := spawnReplica(t, env, opts...)
	r.waitServing(t)
	return r
}

// replica is one broker process and what it has logged.
type replica struct {
	id        string
	cmd       *exec.Cmd
	signalled atomic.Bool

	mu    sync.Mutex
	lines []logLine
	grew  chan struct{} // closed and replaced when a line arrives or the log ends
	ended bool          // stderr reached EOF

	// countDebug, when set, counts debug lines instead of keeping them, for
	// a test that makes more calls than it could keep a line for.
	countDebug bool
	debug      atomic.Int64 // debug lines counted, not kept
	// held stops the reading of stderr while locked (holdLog).
	held sync.Mutex

	exited chan struct{} // closed once the process has been waited for
	state  *os.ProcessState

	serving logLine // the "serving" line, once waitServing returned

	listens bool         // started with BROKER_METRICS_ADDR
	addr    string       // the metrics listener's host:port, once waitServing returned
	http    *http.Client // asks the listener
}

// replicaOption changes how the test watches a replica before it starts.
type replicaOption func(*replica)

// countingDebugLines keeps only a count of the replica's debug lines.
func countingDebugLines(r *replica) { r.countDebug = true }

// spawnReplica starts a broker process with env and nothing else but PATH,
// HOME and TMPDIR, so that the developer's NATS_* variables never leak in.
// The process is stopped when the test ends.
func spawnReplica(t *testing.T, env map[string]string, opts ...replicaOption) *replica {
	t.Helper()
	cmd := exec.Command(brokerBin)
	for _, k := range []string{"PATH", "HOME", "TMPDIR"} {
		if v, ok := os.LookupEnv(k); ok {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
	}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	if cmd.Env == nil {
		cmd.Env = []string{} // nil would mean: inherit the test's environment
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatalf("stderr pipe: %v", err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", brokerBin, err)
	}
	id := env["BROKER_ID"]
	if id == "" {
		id = "pid-" + strconv.Itoa(cmd.Process.Pid)
	}
	r := &replica{id: id, cmd: cmd, grew: make(chan struct{}), exited: make(chan struct{}),
		listens: env["BROKER_METRICS_ADDR"] != "", http: &http.Client{Timeout: 2 * time.Second}}
	for _, o := range opts {
		o(r)
	}
	go func() {
		// Wait closes the pipe, so it may only run once reading is done.
		r.read(stderr)
		_ = cmd.Wait()
		r.state = cmd.ProcessState
		close(r.exited)
	}()
	t.Cleanup(func() { r.cleanup(t); r.http.CloseIdleConnections() })
	return r
}

// waitServing waits for the replica to answer calls, and learns where its
// metrics listener, if it has one, took a port.
func (r *replica) waitServing(t *testing.T) {
	t.Helper()
	// Race-instrumented start-up on a busy machine can be slow.
	r.serving = r.waitFor(t, 15*time.Second, logged("serving"))
	if r.listens {
		// The listener starts before the replica connects, so its line
		// comes first.
		l := r.linesSince(0, logged("metrics listening"))
		if len(l) == 0 || l[0].index > r.serving.index || l[0].attrs["addr"] == "" {
			t.Fatalf("%s was started with BROKER_METRICS_ADDR but logged no address before it served", r.id)
		}
		r.addr = l[0].attrs["addr"]
		// The line comes just before /readyz turns ready: wait for it to
		// leave the stage of joining the queue group.
		natstest.Eventually(t, 5*time.Second, func() bool {
			p := readyz(r.http, "http://"+r.addr+"/readyz")
			return p.err == nil && p.body != "subscribing\n"
		}, "%s's /readyz past subscribing", r.id)
	}
}

// cleanup stops the process if it still runs (SIGTERM, then SIGKILL after
// 5 s), then fails the test if the replica crashed, reported a data race or
// did not stop cleanly, and shows its log if the test failed.
func (r *replica) cleanup(t *testing.T) {
	select {
	case <-r.exited:
		if !r.signalled.Load() {
			t.Errorf("%s exited on its own: %v", r.id, r.state)
		}
	default:
		r.signalled.Store(true)
		_ = r.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-r.exited:
			if code := r.state.ExitCode(); code != 0 {
				t.Errorf("%s exited with code %d after SIGTERM", r.id, code)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("%s still running 5s after SIGTERM; killing it", r.id)
			_ = r.cmd.Process.Kill()
			select {
			case <-r.exited:
			case <-time.After(5 * time.Second):
				t.Errorf("%s still running 5s after SIGKILL", r.id)
			}
		}
	}
	if races := r.linesSince(0, line{"a race report", func(l logLine) bool {
		return strings.Contains(l.raw, "WARNING: DATA RACE")
	}}); len(races) > 0 {
		t.Errorf("%s reported %d data races", r.id, len(races))
	}
	if t.Failed() {
		// Every line but the flood of debug lines, which only the last
		// few of are shown.
		r.mu.Lock()
		defer r.mu.Unlock()
		var b strings.Builder
		shown := 0
		for i, l := range r.lines {
			if (l.level == "DEBUG" && i < len(r.lines)-20) || shown == 500 {
				continue
			}
			shown++
			raw := l.raw
			if len(raw) > 400 {
				raw = raw[:400] + "…"
			}
			fmt.Fprintf(&b, "%s %s\n", l.read.Format("15:04:05.000000"), raw)
		}
		t.Logf("%s stderr, as read (%d of %d lines):\n%s", r.id, shown, len(r.lines), b.String())
	}
}

// replicaStatus is what a replica's /status.json says, as far as the tests
// read it: the router health the replica acts on (README, The status page).
type replicaStatus struct {
	Replica  string `json:"replica"`
	NotReady string `json:"not_ready"`
	Pools    []struct {
		Ingress string         `json:"ingress"`
		Routers []routerStatus `json:"routers"`
	} `json:"pools"`
}

// routerStatus is one router of one pool in /status.json. A null there
// reads as the zero value here.
type routerStatus struct {
	Router string    `json:"router"`
	State  string    `json:"state"` // enabled, disabled, probation or manual
	Until  time.Time `json:"until"`
	Status int       `json:"status"`
	By     string    `json:"by"`
	Level  int       `json:"level"`
}

// get answers a GET of path on the replica's metrics listener.
func (r *replica) get(t *testing.T, path string) []byte {
	t.Helper()
	if r.addr == "" {
		t.Fatalf("%s has no metrics listener to ask for %s: start it with BROKER_METRICS_ADDR", r.id, path)
	}
	resp, err := r.http.Get("http://" + r.addr + path)
	if err != nil {
		t.Fatalf("%s: GET %s: %v", r.id, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: GET %s: %s %q %v", r.id, path, resp.Status, body, err)
	}
	return body
}

// status reads the replica's /status.json.
func (r *replica) status(t *testing.T) replicaStatus {
	t.Helper()
	body := r.get(t, "/status.json")
	var st replicaStatus
	if err := json.Unmarshal(body, &st); err != nil {
		t.Fatalf("%s: /status.json %q: %v", r.id, body, err)
	}
	return st
}

// routerIn returns router's entries in st, one for each pool that has it.
func (st replicaStatus) routerIn(router string) []routerStatus {
	var out []routerStatus
	for _, p := range st.Pools {
		for _, rs := range p.Routers {
			if rs.Router == router {
				out = append(out, rs)
			}
		}
	}
	return out
}

// stateOf is router's state in the replica's /status.json: enabled,
// disabled, probation or manual.
func (r *replica) stateOf(t *testing.T, router string) string {
	t.Helper()
	seen := r.status(t).routerIn(router)
	if len(seen) == 0 {
		t.Fatalf("%s: no pool in /status.json has router %s", r.id, router)
	}
	return seen[0].State
}

// waitState waits at most d until the replica acts on router as in state
// in every pool that has it, as its /status.json says, and returns the
// router as it says it then.
func (r *replica) waitState(t *testing.T, d time.Duration, router, state string) routerStatus {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		seen := r.status(t).routerIn(router)
		if len(seen) == 0 {
			t.Fatalf("%s: no pool in /status.json has router %s", r.id, router)
		}
		if !slices.ContainsFunc(seen, func(rs routerStatus) bool { return rs.State != state }) {
			return seen[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: /status.json says %s is %q (%+v), not %q, %v on", r.id, router, seen[0].State, seen[0], state, d)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// metric sums the samples of the named metric in the replica's /metrics
// whose labels include the given name, value pairs, and says whether the
// replica exports the metric at all.
func (r *replica) metric(t *testing.T, name string, labels ...string) (float64, bool) {
	t.Helper()
	body := r.get(t, "/metrics")
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("%s: /metrics: %v", r.id, err)
	}
	f, ok := families[name]
	if !ok {
		return 0, false
	}
	sum := 0.0
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		match := true
		for i := 0; i+1 < len(labels); i += 2 {
			match = match && have[labels[i]] == labels[i+1]
		}
		if match {
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue() + m.GetUntyped().GetValue()
		}
	}
	return sum, true
}

// logLine is one line of a replica's stderr: a slog record in JSON or text
// form, or anything else the process printed (a panic, a race report).
type logLine struct {
	index int
	read  time.Time // when the test read the line
	raw   string
	at    time.Time // the record's own time
	level string
	msg   string
	attrs map[string]string // every field; numbers in their JSON form
}

// read records stderr line by line until EOF.
func (r *replica) read(stderr io.Reader) {
	br := bufio.NewReader(stderr)
	for {
		r.held.Lock() // waits while the test holds the log
		r.held.Unlock()
		s, err := br.ReadString('\n') // no length limit: a debug line may hold a 1 MB gl_path
		if r.countDebug && strings.HasPrefix(s, `{"time":`) && strings.Contains(s, `,"level":"DEBUG",`) {
			r.debug.Add(1)
			s = ""
		}
		if s = strings.TrimRight(s, "\n"); s != "" {
			l := parseLine(s)
			l.read = time.Now()
			r.mu.Lock()
			l.index = len(r.lines)
			r.lines = append(r.lines, l)
			close(r.grew)
			r.grew = make(chan struct{})
			r.mu.Unlock()
		}
		if err != nil {
			r.mu.Lock()
			r.ended = true
			close(r.grew)
			r.grew = make(chan struct{})
			r.mu.Unlock()
			return
		}
	}
}

func parseLine(s string) logLine {
	l := logLine{raw: s, attrs: map[string]string{}}
	if strings.HasPrefix(s, "{") {
		parseJSON(s, l.attrs)
	} else {
		l.attrs = parseText(s)
	}
	l.level, l.msg = l.attrs["level"], l.attrs["msg"]
	l.at, _ = time.Parse(time.RFC3339Nano, l.attrs["time"])
	return l
}

// parseJSON reads slog's JSON form into attrs, strings unquoted. Where a
// key appears twice the first wins: slog writes its own time, level and msg
// first, and an attribute of the same name ("level" of a backoff) must not
// hide them.
func parseJSON(s string, attrs map[string]string) {
	dec := json.NewDecoder(strings.NewReader(s))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return
		}
		key, _ := tok.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return
		}
		if _, dup := attrs[key]; dup {
			continue
		}
		var str string
		if json.Unmarshal(v, &str) == nil {
			attrs[key] = str
		} else {
			attrs[key] = string(v)
		}
	}
}

// parseText reads slog's text form: key=value pairs, values quoted Go-style
// where they need it.
func parseText(s string) map[string]string {
	m := map[string]string{}
	for range len(s) {
		s = strings.TrimLeft(s, " ")
		eq := strings.IndexByte(s, '=')
		if eq <= 0 || strings.ContainsAny(s[:eq], " \"") {
			return m
		}
		key, rest := s[:eq], s[eq+1:]
		if strings.HasPrefix(rest, `"`) {
			q, err := strconv.QuotedPrefix(rest)
			if err != nil {
				return m
			}
			v, _ := strconv.Unquote(q)
			if _, dup := m[key]; !dup { // the first wins, as in parseJSON
				m[key] = v
			}
			s = rest[len(q):]
		} else {
			end := strings.IndexByte(rest, ' ')
			if end < 0 {
				end = len(rest)
			}
			if _, dup := m[key]; !dup {
				m[key] = rest[:end]
			}
			s = rest[end:]
		}
	}
	return m
}

// line describes the log lines a test looks for.
type line struct {
	what  string
	match func(logLine) bool
}

// logged matches lines with message msg and the given attribute values, as
// name, value pairs.
func logged(msg string, attrs ...string) line {
	what := fmt.Sprintf("msg %q", msg)
	for i := 0; i+1 < len(attrs); i += 2 {
		what += fmt.Sprintf(" %s=%s", attrs[i], attrs[i+1])
	}
	return line{what, func(l logLine) bool {
		if l.msg != msg {
			return false
		}
		for i := 0; i+1 < len(attrs); i += 2 {
			if l.attrs[attrs[i]] != attrs[i+1] {
				return false
			}
		}
		return true
	}}
}

// choice matches the debug line of a replica choosing a router for the
// default ingress.
var choice = line{"a debug line choosing a router for " + ingress, func(l logLine) bool {
	return l.level == "DEBUG" && l.attrs["ingress"] == ingress && l.attrs["router"] != ""
}}

// mark is the index of the next line the replica will log.
func (r *replica) mark() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.lines)
}

// linesSince returns the lines from index from on that match.
func (r *replica) linesSince(from int, want line) []logLine {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []logLine
	for _, l := range r.lines[min(from, len(r.lines)):] {
		if want.match(l) {
			out = append(out, l)
		}
	}
	return out
}

func (r *replica) waitFor(t *testing.T, d time.Duration, want line) logLine {
	t.Helper()
	return r.waitAfter(t, 0, d, want)
}

// waitAfter returns the first line from index from on that matches, waiting
// at most d for it to be logged.
func (r *replica) waitAfter(t *testing.T, from int, d time.Duration, want line) logLine {
	t.Helper()
	timeout := time.NewTimer(d)
	defer timeout.Stop()
	for i := from; ; {
		r.mu.Lock()
		for ; i < len(r.lines); i++ {
			if want.match(r.lines[i]) {
				l := r.lines[i]
				r.mu.Unlock()
				return l
			}
		}
		grew, ended := r.grew, r.ended
		r.mu.Unlock()
		if ended {
			t.Fatalf("%s exited without logging %s", r.id, want.what)
		}
		select {
		case <-grew:
		case <-timeout.C:
			t.Fatalf("%s did not log %s within %v", r.id, want.what, d)
		}
	}
}

func (r *replica) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	r.signalled.Store(true)
	if err := r.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %s: %v", r.id, err)
	}
}

// pause stops the process (SIGSTOP) until resume: as a CPU-throttled
// container or a long stall would be, it reads and answers nothing while the
// server keeps what is sent to it. A paused process is resumed before the
// test's cleanup stops it.
func (r *replica) pause(t *testing.T) {
	t.Helper()
	if err := r.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatalf("pause %s: %v", r.id, err)
	}
	t.Cleanup(func() { _ = r.cmd.Process.Signal(syscall.SIGCONT) })
	// The signal is sent, not yet obeyed: wait until every thread stands.
	natstest.Eventually(t, 5*time.Second, func() bool { return stopped(r.cmd.Process.Pid) }, "%s stopped by SIGSTOP", r.id)
}

// stopped reports whether every thread of process pid is stopped by a
// signal (state T in /proc/PID/task/TID/stat).
func stopped(pid int) bool {
	stats, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
	if err != nil || len(stats) == 0 {
		return false
	}
	for _, f := range stats {
		b, err := os.ReadFile(f)
		// "TID (comm) S ...": the state follows the last parenthesis.
		i := strings.LastIndexByte(string(b), ')')
		if err != nil || i < 0 || i+2 >= len(b) || b[i+2] != 'T' {
			return false
		}
	}
	return true
}

func (r *replica) resume(t *testing.T) {
	t.Helper()
	if err := r.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatalf("resume %s: %v", r.id, err)
	}
}

// holdLog stops reading the replica's stderr until the function it returns
// is called (at the latest when the test ends). Once the pipe's buffer is
// full, whatever in the replica writes a log line waits: with every call
// logged (debug), its handler stands, as on a blocked log pipe, while its
// connection goes on taking calls.
func (r *replica) holdLog(t *testing.T) (release func()) {
	r.held.Lock()
	var once sync.Once
	release = func() { once.Do(r.held.Unlock) }
	t.Cleanup(release)
	return release
}

// kill ends the process with SIGKILL, which leaves it no time to write
// anything on its way out, and waits for it.
func (r *replica) kill(t *testing.T) {
	t.Helper()
	r.signal(t, syscall.SIGKILL)
	if code := r.exitCode(t, 5*time.Second); code != -1 {
		t.Fatalf("%s exited with code %d before SIGKILL ended it", r.id, code)
	}
}

// exitCode waits at most d for the process to exit and returns its code
// (-1 when a signal ended it).
func (r *replica) exitCode(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-r.exited:
		return r.state.ExitCode()
	case <-time.After(d):
		t.Fatalf("%s still running %v after it was told to stop", r.id, d)
		return 0
	}
}
