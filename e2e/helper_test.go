package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
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
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/internal/natstest"
)

// The harness the e2e tests share: a stand-in for the gecholog gateway, the
// bucket as `nats kv` sees it, and replica processes whose logs the tests read.

// gateway makes gecholog's processor calls to the broker.
type gateway struct {
	nc *nats.Conn
}

func newGateway(t *testing.T, s *server.Server) gateway {
	return gateway{nc: natstest.Connect(t, s)}
}

// route is the request context: it returns the router the broker chose, or
// "" when it left the call on the ingress router.
func (g gateway) route(ingress string) (string, error) {
	m, err := g.nc.Request(brokerTopic, fmt.Appendf(nil, `{"gl_path":%q}`, ingress), callTimeout)
	if err != nil {
		return "", err
	}
	if len(m.Data) == 0 {
		return "", nil
	}
	var r struct {
		GLPath *string `json:"gl_path"`
	}
	if err := json.Unmarshal(m.Data, &r); err != nil || r.GLPath == nil {
		return "", fmt.Errorf("reply %q is not {\"gl_path\": router}", m.Data)
	}
	return *r.GLPath, nil
}

// report is the response context: the router used and the status the client
// got. gecholog expects an empty reply.
func (g gateway) report(router string, status int) error {
	m, err := g.nc.Request(brokerTopic, fmt.Appendf(nil, `{"gl_path":%q,"egress_status_code":%d}`, router, status), callTimeout)
	if err != nil {
		return err
	}
	if len(m.Data) != 0 {
		return fmt.Errorf("response context got reply %q, want empty", m.Data)
	}
	return nil
}

// routes makes n request contexts for the default ingress and counts the
// routers chosen.
func (g gateway) routes(t *testing.T, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for i := range n {
		router, err := g.route(ingress)
		if err != nil {
			t.Fatalf("request context %d of %d: %v", i+1, n, err)
		}
		got[router]++
	}
	return got
}

// probe makes request contexts for the default ingress until one goes to
// dud, the router on probation, and reports whether one did within d. The
// replicas claim the probe with a write to the bucket, as calls come: how
// many calls go elsewhere meanwhile depends on the machine, not the time.
func (g gateway) probe(t *testing.T, d time.Duration) bool {
	t.Helper()
	for deadline := time.Now().Add(d); time.Now().Before(deadline); {
		router, err := g.route(ingress)
		if err != nil {
			t.Fatalf("request context: %v", err)
		}
		if router == dud {
			return true
		}
	}
	return false
}

// settle returns once r has logged everything caused by the calls made
// before: a replica handles its subscription's messages in order and logs a
// request context for a path that is no ingress at debug level.
func settle(t *testing.T, g gateway, r *replica) {
	t.Helper()
	path := fmt.Sprintf("/e2esettle%d/", rand.Int64())
	if router, err := g.route(path); err != nil || router != "" {
		t.Fatalf("request context for %s: got %q, %v; want an empty reply", path, router, err)
	}
	r.waitFor(t, 5*time.Second, line{"a debug line for gl_path " + path, func(l logLine) bool {
		return l.level == "DEBUG" && l.attrs["gl_path"] == path
	}})
}

// record is the documented JSON form of a disabled router's value.
type record struct {
	Version int       `json:"v"`
	Router  string    `json:"router"`
	Status  int       `json:"status"`
	Reason  string    `json:"reason"`
	At      time.Time `json:"at"`
	Until   time.Time `json:"until"`
	By      string    `json:"by"`
	Level   int       `json:"level"`
	// A memo, the body of the delete marker that enables the router,
	// also keeps the failures counted towards the threshold and when the
	// last disable ended.
	Failures int       `json:"failures"`
	Ended    time.Time `json:"ended"`
	Probe    *struct {
		By    string    `json:"by"`
		At    time.Time `json:"at"`
		Until time.Time `json:"until"`
	} `json:"probe"`
}

// serverIn starts a server whose bucket the replicas will find in mode:
// "ttl", or "expiry", where a bucket without limit markers, as a 2.10
// server (gecholog's) makes, has the replicas enforce expiry themselves.
func serverIn(t *testing.T, mode string) (*server.Server, *nats.Conn) {
	t.Helper()
	s := natstest.Start(t)
	nc := natstest.Connect(t, s)
	if mode == "expiry" {
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		if _, err = js.CreateKeyValue(t.Context(), jetstream.KeyValueConfig{Bucket: bucketName}); err != nil {
			t.Fatal(err)
		}
	}
	return s, nc
}

func openBucket(t *testing.T, nc *nats.Conn) jetstream.KeyValue {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	kv, err := js.KeyValue(t.Context(), bucketName)
	if err != nil {
		t.Fatalf("open bucket %s: %v", bucketName, err)
	}
	return kv
}

// keys lists the bucket's keys, as `nats kv ls` does.
func keys(t *testing.T, kv jetstream.KeyValue) []string {
	t.Helper()
	k, err := kv.Keys(t.Context())
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil
	}
	if err != nil {
		t.Fatalf("list bucket %s: %v", kv.Bucket(), err)
	}
	slices.Sort(k)
	return k
}

func waitKeys(t *testing.T, kv jetstream.KeyValue, d time.Duration, want ...string) {
	t.Helper()
	natstest.Eventually(t, d, func() bool { return slices.Equal(keys(t, kv), want) }, "bucket %s holds keys %q", kv.Bucket(), want)
}

func readRecord(t *testing.T, kv jetstream.KeyValue, key string) record {
	t.Helper()
	e, err := kv.Get(t.Context(), key)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	var r record
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		t.Fatalf("record %s = %q: %v", key, e.Value(), err)
	}
	if r.Router != key {
		t.Fatalf("record %s names router %q", key, r.Router)
	}
	return r
}

// listenOn makes the server listen on host:port.
func listenOn(host string, port int) natstest.Option {
	return func(o *server.Options) { o.Host, o.Port = host, port }
}

// startGechologBus starts a token-protected server on port 4222, where the
// original broker looks for gecholog's bus, at a random address in 127/8
// (all of which Linux routes to the loopback interface) so that tests and a
// developer's own NATS server on 127.0.0.1:4222 do not collide. It is the
// only test of GECHOLOG_HOST on the default port, so it never skips: when
// no address will do, the test fails naming what listens in the way.
func startGechologBus(t *testing.T, token string) (*server.Server, string) {
	t.Helper()
	const tries = 100
	var err error
	for range tries {
		host := fmt.Sprintf("127.%d.%d.%d", rand.IntN(256), rand.IntN(256), 2+rand.IntN(253))
		// natstest.Start waits 10 s for a server that cannot bind, so try
		// the address first.
		var l net.Listener
		if l, err = net.Listen("tcp", net.JoinHostPort(host, "4222")); err != nil {
			continue
		}
		l.Close()
		return natstest.Start(t, natstest.WithToken(token), listenOn(host, 4222)), host
	}
	t.Fatalf("cannot test GECHOLOG_HOST on port 4222: could not listen there at any of %d random 127/8 addresses (last: %v); listening on port 4222: %s",
		tries, err, listenersOn(4222))
	return nil, ""
}

// listenersOn describes the TCP sockets listening on port, from
// /proc/net/tcp and tcp6, with the process that owns each where this user
// may see it and what a NATS server there says it is.
func listenersOn(port int) string {
	var found []string
	for _, file := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		data, err := os.ReadFile(file)
		if err != nil {
			continue
		}
		for _, row := range strings.Split(string(data), "\n")[1:] {
			// sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
			f := strings.Fields(row)
			if len(f) < 10 || f[3] != "0A" { // 0A: LISTEN
				continue
			}
			hexHost, hexPort, ok := strings.Cut(f[1], ":")
			if p, err := strconv.ParseUint(hexPort, 16, 16); !ok || err != nil || int(p) != port {
				continue
			}
			addr := net.JoinHostPort(procNetIP(hexHost), strconv.Itoa(port))
			found = append(found, addr+" ("+socketOwner(f[9])+"; "+natsInfo(addr)+")")
		}
	}
	if len(found) == 0 {
		return "nothing found in /proc/net/tcp{,6}; see `ss -ltnp 'sport = :" + strconv.Itoa(port) + "'`"
	}
	return strings.Join(found, ", ")
}

// procNetIP reads an address as /proc/net/tcp writes it: the bytes of each
// 32-bit word in host (little-endian) order.
func procNetIP(h string) string {
	b := make([]byte, 0, len(h)/2)
	for i := 0; i+8 <= len(h); i += 8 {
		w, err := strconv.ParseUint(h[i:i+8], 16, 32)
		if err != nil {
			return h
		}
		b = append(b, byte(w), byte(w>>8), byte(w>>16), byte(w>>24))
	}
	return net.IP(b).String()
}

// socketOwner names the process holding the socket with inode, if this
// user can see it.
func socketOwner(inode string) string {
	want := "socket:[" + inode + "]"
	fds, _ := filepath.Glob("/proc/[0-9]*/fd/*")
	for _, fd := range fds {
		if link, err := os.Readlink(fd); err == nil && link == want {
			pid := strings.Split(fd, "/")[2]
			comm, _ := os.ReadFile("/proc/" + pid + "/comm")
			return "pid " + pid + " " + strings.TrimSpace(string(comm))
		}
	}
	return "owner not visible to this user"
}

// natsInfo says what the server at addr announces, if it is a NATS server.
func natsInfo(addr string) string {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "does not accept: " + err.Error()
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	first, _ := bufio.NewReader(c).ReadString('\n')
	var info struct {
		Name    string `json:"server_name"`
		Version string `json:"version"`
	}
	if js, ok := strings.CutPrefix(first, "INFO "); ok && json.Unmarshal([]byte(js), &info) == nil {
		return fmt.Sprintf("a NATS server %s, version %s", info.Name, info.Version)
	}
	if first == "" {
		return "not a NATS server: it said nothing within 1s"
	}
	return fmt.Sprintf("not a NATS server: it said %q", first)
}

// replicaEnv is the environment of a replica serving on s, with the logs in
// JSON; more are extra name, value pairs.
func replicaEnv(s *server.Server, id string, more ...string) map[string]string {
	env := map[string]string{
		"NATS_URL":          s.ClientURL(),
		"BROKER_ID":         id,
		"BROKER_LOG_FORMAT": "json",
		"BROKER_LOG_LEVEL":  "info",
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
	r := &replica{id: id, cmd: cmd, grew: make(chan struct{}), exited: make(chan struct{})}
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
	t.Cleanup(func() { r.cleanup(t) })
	return r
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

// waitServing waits for the replica to answer calls.
func (r *replica) waitServing(t *testing.T) {
	t.Helper()
	// Race-instrumented start-up on a busy machine can be slow.
	r.serving = r.waitFor(t, 15*time.Second, logged("serving"))
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
