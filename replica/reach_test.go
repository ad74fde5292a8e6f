package replica_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/ops"
	"github.com/gecholog/broker/replica"
)

// listenerOf is the address a replica's HTTP listener took, from its log.
func listenerOf(t *testing.T, logs *syncBuffer) string {
	t.Helper()
	m := regexp.MustCompile(`"msg":"metrics listening","addr":"([^"]+)"`).FindStringSubmatch(logs.String())
	if m == nil {
		t.Fatalf("no listener address in the log:\n%s", logs.String())
	}
	return "http://" + m[1]
}

// fetch gets url within a second and returns its status and body.
func fetch(url string) (int, string, error) {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// endpointWatch asks the listener's endpoints every 50 ms until stopped,
// and keeps the longest answer and any failure.
type endpointWatch struct {
	stop    chan struct{}
	done    chan struct{}
	mu      sync.Mutex
	longest time.Duration
	failed  []string
}

func watchEndpoints(base string) *endpointWatch {
	w := &endpointWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			for _, path := range []string{"/metrics", "/readyz", "/healthz", "/status.json", "/"} {
				start := time.Now()
				_, _, err := fetch(base + path)
				took := time.Since(start)
				w.mu.Lock()
				w.longest = max(w.longest, took)
				if err != nil {
					w.failed = append(w.failed, path+": "+err.Error())
				}
				w.mu.Unlock()
			}
			select {
			case <-w.stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	return w
}

func (w *endpointWatch) end() (time.Duration, []string) {
	close(w.stop)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.longest, w.failed
}

// TestAReplicaWhoseBucketLostItsQuorumSaysSoKeepsServingAndCatchesUpWhenItIsBack
// takes two of a three-node cluster down under a replica connected to the
// third, which stays up: the connection is fine, but the bucket (three
// replicas) has no quorum. Within seconds the replica says so (/readyz 503
// with the cause and for how long, /healthz 200, broker_bucket_reachable 0,
// the page, one warning), goes on answering calls and keeps the failure it
// sees; when the nodes are back it says so and the failure lands in the
// bucket.
func TestAReplicaWhoseBucketLostItsQuorumSaysSoKeepsServingAndCatchesUpWhenItIsBack(t *testing.T) {
	nodes := natstest.StartCluster(t, 3)
	logs := &syncBuffer{}
	r, stop := startReplica(t, replica.Config{NATS: natsconn.Settings{Servers: nodes[0].ClientURL()}, KVReplicas: 3,
		Policy: broker.Policy{DisabledTime: time.Minute}, ID: "replica-1", MetricsAddr: "127.0.0.1:0", Logger: jsonLogger(logs)})
	defer stop()
	base := listenerOf(t, logs)
	nc := natstest.ConnectURL(t, nodes[0].ClientURL())
	if code, body, err := fetch(base + "/readyz"); err != nil || code != http.StatusOK {
		t.Fatalf("/readyz before: %d %q %v", code, body, err)
	}

	for _, n := range nodes[1:] {
		n.Shutdown()
		n.WaitForShutdown()
	}
	lost := time.Now()
	var body string
	natstest.Eventually(t, 15*time.Second, func() bool {
		var code int
		code, body, _ = fetch(base + "/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "bucket unreachable")
	}, "/readyz saying the bucket is unreachable (last: %q)", &body)
	t.Logf("/readyz said after %v: %s", time.Since(lost).Round(time.Millisecond), strings.TrimSpace(body))
	says(t, "/readyz", body, "KV_gl_broker")
	if code, _, err := fetch(base + "/healthz"); err != nil || code != http.StatusOK {
		t.Errorf("/healthz while the bucket is unreachable: %d %v, want 200", code, err)
	}
	_, metrics, err := fetch(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	says(t, "/metrics", metrics, "broker_bucket_reachable 0")
	says(t, "/metrics", metrics, "broker_bucket_last_answer_timestamp_seconds")
	says(t, "/metrics", metrics, "broker_nats_connected 1")
	_, page, err := fetch(base + "/status.json")
	if err != nil {
		t.Fatal(err)
	}
	var snap struct{ Stale string }
	if err := json.Unmarshal([]byte(page), &snap); err != nil || !strings.HasPrefix(snap.Stale, "bucket unreachable for") {
		t.Errorf("/status.json's stale is %q (%v), want why the bucket is unreachable", snap.Stale, err)
	}
	line, ok := logLine(logs.String(), "the router health bucket does not answer: serving with what this replica knows and the failures it sees itself, which it writes once the bucket answers")
	if !ok || !strings.Contains(line["cause"].(string), "KV_gl_broker") {
		t.Errorf("no warning naming the cause; logged:\n%s", logs.String())
	}

	// An operator's command through that node names the cause.
	tgt := ops.Target{NATS: natsconn.Settings{Servers: nodes[0].ClientURL()}, Bucket: replica.DefaultBucket, Pools: broker.DefaultPools()}
	// (The disable may land once the nodes are back, as the error says.)
	err = ops.DisableRouter(t.Context(), tgt, ops.Disable{Router: "/azure/dud/", For: time.Minute, Reason: "test"}, func(string) string { return "" }, io.Discard)
	// Failing to open the bucket, it wrote nothing and says to try again;
	// failing to write, it says the write may still land.
	if err == nil || !strings.Contains(err.Error(), "KV_gl_broker") || !strings.Contains(err.Error(), "may still land") && !strings.Contains(err.Error(), "try again") {
		t.Errorf("broker disable without quorum: %v, want the cause named, and what to do", err)
	} else {
		t.Logf("broker disable without quorum: %v", err)
	}

	// It keeps serving, and keeps the failure it sees.
	router := ask(t, nc, "/azure/")
	for i := 0; router == "/azure/dud/" && i < 100; i++ {
		router = ask(t, nc, "/azure/")
	}
	if router == "" || router == "/azure/dud/" {
		t.Fatal("no router while the bucket is unreachable")
	}
	tell(t, nc, router, 502)
	natstest.Eventually(t, 5*time.Second, func() bool { return r.Broker().Phase(router) == broker.Disabled },
		"%s disabled in the replica's own view", router)

	for _, n := range nodes[1:] {
		natstest.Restart(t, n)
	}
	back := time.Now()
	natstest.Eventually(t, 60*time.Second, func() bool {
		code, _, _ := fetch(base + "/readyz")
		return code == http.StatusOK
	}, "/readyz 200 once the nodes are back")
	t.Logf("ready again %v after the nodes were back", time.Since(back).Round(time.Millisecond))
	if _, ok := logLine(logs.String(), "the router health bucket answers again; reading every router's health"); !ok {
		t.Errorf("no line saying the bucket answers again; logged:\n%s", logs.String())
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if rec := waitRecord(t, js, router, 10*time.Second); rec.Status != 502 {
		t.Errorf("record %+v, want the 502 seen while the bucket was unreachable", rec)
	}
}

// TestAReplicaWhoseServerStallsMovesToAnotherWithinSeconds cuts the link
// between a replica and its server without closing it, as a partition
// does: packets stop, nothing is reset. The replica was given only that
// server and learned the others from the cluster. It must notice within
// seconds (nats.go pings every 2 minutes by default), move to a server
// it learned, and its endpoints must answer throughout.
func TestAReplicaWhoseServerStallsMovesToAnotherWithinSeconds(t *testing.T) {
	nodes := natstest.StartCluster(t, 3)
	proxy := natstest.StartProxy(t, nodes[0].ClientURL())
	logs := &syncBuffer{}
	r, stop := startReplica(t, replica.Config{NATS: natsconn.Settings{Servers: proxy.ClientURL()}, KVReplicas: 3,
		Policy: broker.Policy{DisabledTime: time.Minute}, ID: "replica-1", MetricsAddr: "127.0.0.1:0", Logger: jsonLogger(logs)})
	defer stop()
	base := listenerOf(t, logs)
	if got := r.Server(); got != proxy.ClientURL() {
		t.Fatalf("replica on %s, want the proxy %s", got, proxy.ClientURL())
	}

	w := watchEndpoints(base)
	proxy.Stall()
	cut := time.Now()
	natstest.Eventually(t, 20*time.Second, func() bool { s := r.Server(); return s != "" && s != proxy.ClientURL() },
		"the replica on another server")
	t.Logf("moved to %s %v after the cut", r.Server(), time.Since(cut).Round(time.Millisecond))
	natstest.Eventually(t, 10*time.Second, func() bool {
		code, _, _ := fetch(base + "/readyz")
		return code == http.StatusOK
	}, "/readyz 200 on the new server")
	// The old server still holds the stalled connection's subscription
	// until its own pings give up on it (2 minutes apart by default; the
	// README's cluster section), and may send it a call that never comes
	// back; the moved replica answers the others.
	nc := natstest.ConnectURL(t, r.Server())
	natstest.Eventually(t, 20*time.Second, func() bool {
		m, err := nc.Request(replica.DefaultSubject, []byte(askRouter), 500*time.Millisecond)
		return err == nil && strings.HasPrefix(string(m.Data), `{"gl_path":"/azure/`)
	}, "a router from the moved replica")
	longest, failed := w.end()
	t.Logf("the endpoints' longest answer while the link was cut: %v", longest.Round(time.Millisecond))
	if len(failed) > 0 {
		t.Errorf("endpoints failed while the link was cut: %v", failed)
	}
}

// TestBrokerStatusMarksAReplicaThatCannotReachItsBucketStale holds back
// every JetStream stream-info request one replica sends, as a server cut
// off from its cluster leaves them unanswered, while the replica's
// connection and its word on the stats subject go on; `broker status`,
// reading the bucket through a server that works, marks that replica
// stale with its cause, and no longer once the requests flow again.
func TestBrokerStatusMarksAReplicaThatCannotReachItsBucketStale(t *testing.T) {
	t.Parallel() // waits on the fleet more than it computes
	s := natstest.Start(t)
	proxy := natstest.StartProxy(t, s.ClientURL())
	_, stop := startReplica(t, replica.Config{NATS: natsconn.Settings{Servers: proxy.ClientURL()},
		Policy: broker.Policy{DisabledTime: time.Minute}, ID: "replica-1", Logger: jsonLogger(io.Discard)})
	defer stop()
	tgt := ops.Target{NATS: natsconn.Settings{Servers: s.ClientURL()}, Bucket: replica.DefaultBucket, Pools: broker.DefaultPools()}
	status := func() string {
		var out bytes.Buffer
		if err := ops.Status(t.Context(), tgt, ops.StatusOptions{}, &out); err != nil {
			t.Fatalf("broker status: %v", err)
		}
		return out.String()
	}
	says(t, "broker status", status(), "replicas: 1 heard on broker.stats.gl_broker (replica-1)\n")

	proxy.Hold(func(subject string) bool { return strings.HasPrefix(subject, "$JS.API.STREAM.INFO.") })
	var table string
	natstest.Eventually(t, 15*time.Second, func() bool {
		table = status()
		return strings.Contains(table, "replica-1 (STALE: bucket unreachable for ")
	}, "broker status marking replica-1 stale; it says:\n%s", &table)
	says(t, "broker status", table, "KV_gl_broker")

	proxy.Release()
	natstest.Eventually(t, 15*time.Second, func() bool {
		table = status()
		return strings.Contains(table, "(replica-1)\n")
	}, "broker status no longer marking replica-1 stale; it says:\n%s", &table)
}

// TestAReplicaBehindANodeCutOffFromItsClusterMovesToTheMajority cuts one
// node of three off from the other two (its routes stall; its clients
// still reach it), as a network partition does. The replica on it was
// given only that node and learned the others from the cluster. It must
// say its view may be stale, move to a node of the majority within
// seconds, and there hear the disable the majority made meanwhile.
func TestAReplicaBehindANodeCutOffFromItsClusterMovesToTheMajority(t *testing.T) {
	c := natstest.StartPartitionable(t, 3)
	cutURL := c.Servers[0].ClientURL()
	logs := &syncBuffer{}
	r, stop := startReplica(t, replica.Config{NATS: natsconn.Settings{Servers: cutURL}, KVReplicas: 3,
		Policy: broker.Policy{DisabledTime: time.Minute}, ID: "replica-1", MetricsAddr: "127.0.0.1:0", Logger: jsonLogger(logs)})
	defer stop()
	_, stopOther := startReplica(t, replica.Config{NATS: natsconn.Settings{Servers: c.Servers[1].ClientURL()}, KVReplicas: 3,
		Policy: broker.Policy{DisabledTime: time.Minute}, ID: "replica-2", Logger: jsonLogger(io.Discard)})
	defer stopOther()
	base := listenerOf(t, logs)
	leader := "a node of the majority"
	if c.Servers[0].JetStreamIsStreamLeader("$G", "KV_gl_broker") {
		leader = "the cut-off node"
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("replica-1 logged:\n%s", logs.String())
		}
	})

	c.Cut(0)
	cut := time.Now()
	var elected time.Duration // until the majority had a leader for the bucket
	natstest.Eventually(t, 20*time.Second, func() bool {
		if elected == 0 && (c.Servers[1].JetStreamIsStreamLeader("$G", "KV_gl_broker") || c.Servers[2].JetStreamIsStreamLeader("$G", "KV_gl_broker")) {
			elected = time.Since(cut)
		}
		s := r.Server()
		return s != "" && s != cutURL && s != c.LinkURL(0) // not the cut-off node by the address it advertises
	}, "replica-1 on a node of the majority")
	moved := time.Since(cut)
	// It moves once, to the server it found the bucket answering through.
	// nats.go on its own goes to whichever server its pool holds next,
	// n1 again by the address it advertises among them.
	const moving = "moving to another NATS server: the router health bucket answers through it, not through this one"
	if line, ok := logLine(logs.String(), moving); !ok {
		t.Errorf("no line saying why it moved")
	} else if line["to"] != r.Server() {
		t.Errorf("moved to %s, not to %v, through which the bucket answered", r.Server(), line["to"])
	}
	if n := strings.Count(logs.String(), moving); n != 1 {
		t.Errorf("moved %d times, want once", n)
	}
	said, ok := logLine(logs.String(), "the router health bucket does not answer: serving with what this replica knows and the failures it sees itself, which it writes once the bucket answers")
	if !ok {
		t.Errorf("no line saying the bucket did not answer before it moved")
	}
	t.Logf("bucket leader on %s (the majority's leader seen %v after the cut); replica-1 said its bucket did not answer (%v) and moved to %s %v after the cut",
		leader, elected.Round(time.Millisecond), said["cause"], r.Server(), moved.Round(time.Millisecond))

	// The majority's disable, made through the other node, reaches it.
	nc := natstest.ConnectURL(t, c.Servers[1].ClientURL())
	natstest.Eventually(t, 20*time.Second, func() bool {
		m, err := nc.Request(replica.DefaultSubject, []byte(`{"gl_path":"/azure/gpt4/","egress_status_code":502}`), 500*time.Millisecond)
		return err == nil && m != nil
	}, "a failure report answered on the majority")
	natstest.Eventually(t, 10*time.Second, func() bool { return r.Broker().Phase("/azure/gpt4/") == broker.Disabled },
		"replica-1 holding the majority's disable")
	natstest.Eventually(t, 10*time.Second, func() bool {
		code, _, _ := fetch(base + "/readyz")
		return code == http.StatusOK
	}, "replica-1 ready on the majority")
	c.Heal(0)
}
