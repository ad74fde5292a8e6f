package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/internal/standin"
	"github.com/gecholog/broker/internal/testutil/natstest"
)

// The harness the e2e tests share: a stand-in for the gecholog gateway, the
// bucket as `nats kv` sees it, the servers the replicas use and the pools
// files they read. The replica processes themselves are in
// replica_helper_test.go, the deployment files' readers in
// deploy_helper_test.go.

// The default pool, as the original broker hard-coded it.
const (
	ingress    = "/azure/"
	gpt35      = "/azure/gpt35turbo/"
	gpt4       = "/azure/gpt4/"
	dud        = "/azure/dud/"
	bucketName = "gl_broker"
)

var pool = []string{gpt35, gpt4, dud}

// callTimeout bounds one processor call. gecholog waits 50 ms; the replicas
// here are race-instrumented and share two cores with the test, so allow
// more and let the assertions, not the timeout, say what is correct.
const callTimeout = 2 * time.Second

// brokerTopic is the subject both broker processor entries use.
const brokerTopic = "coburn.gl.broker"

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

// poolsFile writes a pools file for the test and returns its path.
func poolsFile(t *testing.T, json string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pools.json")
	if err := os.WriteFile(path, []byte(json), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// llmGateway serves llms (router → deployment) on loopback and returns the
// stand-in for gecholog that calls them through the replicas on s, logging
// each transaction on gecholog's seed logger subject.
func llmGateway(t *testing.T, s *server.Server, llms map[string]*standin.LLM) standin.Gateway {
	t.Helper()
	ups := &standin.Upstreams{}
	client := standin.NewClient(30 * time.Second)
	t.Cleanup(func() { client.CloseIdleConnections(); ups.Close() })
	for router, llm := range llms {
		if err := ups.Add(router, llm); err != nil {
			t.Fatal(err)
		}
	}
	return standin.Gateway{NC: natstest.Connect(t, s), Subject: brokerTopic, Upstreams: ups.URLs, Client: client,
		Logger: "coburn.gl.logger", Timeout: callTimeout}
}

// askRouter is gecholog's request context for the default ingress.
var askRouter = fmt.Appendf(nil, `{"gl_path":%q}`, ingress)

// routerOf reads a request context's reply; "" for an empty one.
func routerOf(t *testing.T, m *nats.Msg) string {
	t.Helper()
	if len(m.Data) == 0 {
		return ""
	}
	var r struct {
		GLPath string `json:"gl_path"`
	}
	if err := json.Unmarshal(m.Data, &r); err != nil {
		t.Fatalf("reply %q is not {\"gl_path\": router}", m.Data)
	}
	return r.GLPath
}

// calls are processor calls published without waiting for their replies,
// as gecholog's many clients make them, each with its own reply subject, so
// that the test knows which were answered, with what and when.
type calls struct {
	nc    *nats.Conn
	inbox string

	mu      sync.Mutex
	answers map[int]answer // by call
	grew    chan struct{}  // closed and replaced when an answer arrives
}

type answer struct {
	msg *nats.Msg
	at  time.Time // when the test received it
}

func newCalls(t *testing.T, nc *nats.Conn) *calls {
	t.Helper()
	c := &calls{nc: nc, inbox: nc.NewInbox(), answers: map[int]answer{}, grew: make(chan struct{})}
	sub, err := nc.Subscribe(c.inbox+".*", func(m *nats.Msg) {
		i, err := strconv.Atoi(m.Subject[len(c.inbox)+1:])
		if err != nil {
			return
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		c.answers[i] = answer{m, time.Now()}
		close(c.grew)
		c.grew = make(chan struct{})
	})
	if err == nil {
		// A reply this test's client dropped would look like a call the
		// broker lost.
		err = sub.SetPendingLimits(-1, -1)
	}
	if err == nil {
		err = nc.Flush()
	}
	if err != nil {
		t.Fatalf("subscribe to replies: %v", err)
	}
	return c
}

// publish sends call i with body, without waiting.
func (c *calls) publish(t *testing.T, i int, body []byte) {
	t.Helper()
	if err := c.nc.PublishRequest(brokerTopic, c.inbox+"."+strconv.Itoa(i), body); err != nil {
		t.Fatalf("publish call %d: %v", i, err)
	}
}

// flush returns once the server has every call published before: it has
// routed them to the replica, whose connection holds them on their way.
func (c *calls) flush(t *testing.T) {
	t.Helper()
	if err := c.nc.FlushTimeout(10 * time.Second); err != nil {
		t.Fatalf("flush: %v", err)
	}
}

func (c *calls) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.answers)
}

func (c *calls) answer(i int) (answer, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	a, ok := c.answers[i]
	return a, ok
}

// answered waits at most d for call i's answer and says whether it came.
func (c *calls) answered(i int, d time.Duration) bool {
	timeout := time.NewTimer(d)
	defer timeout.Stop()
	for {
		c.mu.Lock()
		_, ok := c.answers[i]
		grew := c.grew
		c.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-grew:
		case <-timeout.C:
			return false
		}
	}
}

// waitAnswered fails the test unless calls 0 to n-1 are all answered
// within d.
func (c *calls) waitAnswered(t *testing.T, d time.Duration, n int) {
	t.Helper()
	deadline := time.Now().Add(d)
	for i := range n {
		if !c.answered(i, time.Until(deadline)) {
			t.Fatalf("call %d of %d not answered within %v (%d answered)", i, n, d, c.count())
		}
	}
}

// lastWrite is the newest message on a router's key: its live record, or
// the memo in the delete marker that enabled it, which `nats kv get` hides
// and the broker reads.
type lastWrite struct {
	rec     record
	deleted bool // a delete marker (KV-Operation: DEL)
}

// waitLastWrite waits at most 5 s for the newest message on key to be one
// that want accepts, and returns it.
func waitLastWrite(t *testing.T, js jetstream.JetStream, key, what string, want func(lastWrite) bool) lastWrite {
	t.Helper()
	stream, err := js.Stream(t.Context(), "KV_"+bucketName)
	if err != nil {
		t.Fatalf("stream of bucket %s: %v", bucketName, err)
	}
	var w lastWrite
	natstest.Eventually(t, 5*time.Second, func() bool {
		m, err := stream.GetLastMsgForSubject(t.Context(), "$KV."+bucketName+"."+key)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return false
		}
		if err != nil {
			t.Fatalf("last message on key %s: %v", key, err)
		}
		w = lastWrite{deleted: m.Header.Get("KV-Operation") == "DEL"}
		if len(m.Data) > 0 {
			if err := json.Unmarshal(m.Data, &w.rec); err != nil {
				t.Fatalf("key %s holds %q: %v", key, m.Data, err)
			}
		}
		return want(w)
	}, "key %s: %s", key, what)
	return w
}

// lastSeq is the bucket stream's last sequence: every write ever made to
// the bucket, as it keeps one revision per key.
func lastSeq(t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
	stream, err := js.Stream(t.Context(), "KV_"+bucketName)
	if err != nil {
		t.Fatalf("stream of bucket %s: %v", bucketName, err)
	}
	info, err := stream.Info(t.Context())
	if err != nil {
		t.Fatalf("stream info: %v", err)
	}
	return info.State.LastSeq
}

// probe is one answer from /readyz.
type probe struct {
	code int
	body string
	at   time.Time // when it was received
	err  error
}

func readyz(client *http.Client, url string) probe {
	resp, err := client.Get(url)
	if err != nil {
		return probe{err: err, at: time.Now()}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return probe{code: resp.StatusCode, body: string(b), at: time.Now(), err: err}
}
