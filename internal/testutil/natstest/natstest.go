// Package natstest starts embedded NATS servers on random loopback ports for
// tests.
package natstest

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"
)

// Option changes the server's options before it starts.
type Option func(*server.Options)

// WithoutJetStream starts a server like gecholog's stock one, with no JetStream.
func WithoutJetStream() Option { return func(o *server.Options) { o.JetStream = false } }

// WithToken requires clients to present token.
func WithToken(token string) Option { return func(o *server.Options) { o.Authorization = token } }

// WithStoreDir keeps JetStream's files in dir, so that a server started
// again on the same dir finds its streams.
func WithStoreDir(dir string) Option { return func(o *server.Options) { o.StoreDir = dir } }

// ReadyWithin bounds every wait here for a server to listen, for
// JetStream to be ready and for a meta leader to be elected. Only a hang
// should reach it: each wait ends on its condition, and a fast machine
// never waits long. A 3-node cluster starting under -race on a busy 2-core
// machine (a load of 5) once took more than the 10 s these waits had; a
// deadline must not decide a test by the machine's speed.
const ReadyWithin = time.Minute

// Start runs a nats-server with JetStream (file storage in a temporary
// directory) on a random loopback port and shuts it down when the test ends.
func Start(t testing.TB, opts ...Option) *server.Server {
	t.Helper()
	o := &server.Options{
		Host:      "127.0.0.1",
		Port:      server.RANDOM_PORT,
		JetStream: true,
		StoreDir:  t.TempDir(),
		NoLog:     true,
		NoSigs:    true,
	}
	for _, opt := range opts {
		opt(o)
	}
	s, err := server.NewServer(o)
	if err != nil {
		t.Fatalf("natstest: new server: %v", err)
	}
	go s.Start()
	if !s.ReadyForConnections(ReadyWithin) {
		t.Fatalf("natstest: server not ready within %v", ReadyWithin)
	}
	t.Cleanup(func() {
		settle(s)
		s.Shutdown()
		s.WaitForShutdown()
	})
	return s
}

// settle waits, up to a few seconds, for the JetStream API requests the
// server is still serving, such as a bucket a replica stopped before its
// answer came: a server shut down while it creates a stream leaves that
// stream's file store running (nats-server 2.15.2), which goleak then
// finds. See LeakOptions.
func settle(s *server.Server) {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		v, err := s.Varz(nil)
		if err != nil || v.JetStream.Stats == nil || v.JetStream.Stats.API.Inflight == 0 {
			return
		}
		time.Sleep(5 * time.Millisecond) // polling the server's own counter
	}
}

// LeakOptions are goleak's options for a package whose tests run
// embedded servers: the two goroutines of a stream's file store that
// nats-server 2.15.2 leaves running when it shuts down while creating the
// stream (its flush loop and its access-time ticker). settle makes that
// rare; these keep the rest of goleak's check for the one case left.
func LeakOptions() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreTopFunction("github.com/nats-io/nats-server/v2/server.(*fileStore).flushStreamStateLoop"),
		goleak.IgnoreTopFunction("github.com/nats-io/nats-server/v2/server/ats.Register.func1"),
	}
}

// Connect opens a client connection to s that is closed when the test ends.
func Connect(t testing.TB, s *server.Server, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(s.ClientURL(), opts...)
	if err != nil {
		t.Fatalf("natstest: connect: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// JetStream returns a JetStream context on a new connection to s.
func JetStream(t testing.TB, s *server.Server) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(Connect(t, s))
	if err != nil {
		t.Fatalf("natstest: jetstream: %v", err)
	}
	return js
}

// Eventually fails the test unless cond becomes true within d. It polls
// every few milliseconds.
func Eventually(t testing.TB, d time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: "+format, append([]any{d}, args...)...)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// StartCluster runs n nats-servers with JetStream as one cluster on
// loopback: distinct server names (n1, n2, ...), separate stores, and
// routes from every node to every other. It returns once the JetStream meta
// group has a leader that counts every node, so that a stream with n
// replicas can be created at once. Each server is shut down when the test
// ends; opts apply to every node.
func StartCluster(t testing.TB, n int, opts ...Option) []*server.Server {
	t.Helper()
	// JetStream refuses a cluster node without routes, so every port must
	// be known before the first node starts. A port found free may be taken
	// before its node binds it; then start the cluster again on new ports.
	var servers []*server.Server
	for attempt := 1; servers == nil; attempt++ {
		var err error
		if servers, err = startCluster(t, n, opts); err != nil {
			if attempt == 3 {
				t.Fatalf("natstest: cluster: %v", err)
			}
			t.Logf("natstest: cluster: %v; trying new ports", err)
		}
	}
	t.Cleanup(func() {
		for _, s := range servers {
			s.Shutdown()
			s.WaitForShutdown()
		}
	})
	Eventually(t, ReadyWithin, func() bool {
		for _, s := range servers {
			if s.JetStreamIsLeader() && len(s.JetStreamClusterPeers()) == n {
				return true
			}
		}
		return false
	}, "a JetStream meta leader that knows all %d nodes", n)
	return servers
}

func startCluster(t testing.TB, n int, opts []Option) ([]*server.Server, error) {
	ports, err := FreePorts(2 * n) // client ports, then cluster ports
	if err != nil {
		return nil, err
	}
	servers := make([]*server.Server, 0, n)
	stop := func() {
		for _, s := range servers {
			s.Shutdown()
			s.WaitForShutdown()
		}
	}
	for i := range n {
		o := &server.Options{
			ServerName: fmt.Sprintf("n%d", i+1),
			Host:       "127.0.0.1",
			Port:       ports[i],
			JetStream:  true,
			StoreDir:   t.TempDir(),
			NoLog:      true,
			NoSigs:     true,
			Cluster:    server.ClusterOpts{Name: "natstest", Host: "127.0.0.1", Port: ports[n+i]},
		}
		for j := range n {
			if j != i {
				o.Routes = append(o.Routes, &url.URL{Scheme: "nats-route", Host: fmt.Sprintf("127.0.0.1:%d", ports[n+j])})
			}
		}
		for _, opt := range opts {
			opt(o)
		}
		s, err := server.NewServer(o)
		if err != nil {
			stop()
			return nil, fmt.Errorf("new server %s: %w", o.ServerName, err)
		}
		nodeOptions.Store(s, o.Clone())
		servers = append(servers, s)
		go s.Start()
	}
	for _, s := range servers {
		if !s.ReadyForConnections(ReadyWithin) {
			stop()
			return nil, fmt.Errorf("node %s not ready within %v", s.Name(), ReadyWithin)
		}
	}
	return servers, nil
}

// nodeOptions holds each cluster node's options, for Restart.
var nodeOptions sync.Map // *server.Server → *server.Options

// Restart starts a cluster node that was shut down again, on its ports
// and its store, and shuts the new one down when the test ends.
func Restart(t testing.TB, s *server.Server) *server.Server {
	t.Helper()
	o, ok := nodeOptions.Load(s)
	if !ok {
		t.Fatalf("natstest: restart %s: not a node of StartCluster", s.Name())
	}
	n, err := server.NewServer(o.(*server.Options).Clone())
	if err != nil {
		t.Fatalf("natstest: restart %s: %v", s.Name(), err)
	}
	nodeOptions.Store(n, o)
	go n.Start()
	if !n.ReadyForConnections(ReadyWithin) {
		t.Fatalf("natstest: restarted %s not ready within %v", s.Name(), ReadyWithin)
	}
	t.Cleanup(func() {
		n.Shutdown()
		n.WaitForShutdown()
	})
	return n
}

// FreePorts finds n distinct loopback ports nobody listens on, for a
// server that must listen on a port known before it starts (a cluster's
// routes, a node restarted on its port).
//
// They are picked below the kernel's ephemeral range (ports a listener on
// port 0 or an outgoing connection is given; 32768 and up on Linux): a
// port found by listening on port 0 and closing the listener can be taken
// by any connection made before the server binds it, and with many tests
// at once one was (a partition bench's node never became ready). Where
// the range starts too low to leave room, they are found on port 0 as
// before. A port handed out is reserved (see reserve): no test process
// is given it again while the one that took it runs.
func FreePorts(n int) ([]int, error) {
	reserving.Lock()
	defer reserving.Unlock()
	low, high := 10000, ephemeralStart()
	var ports []int
	for tries := 0; len(ports) < n && high-low > 1000 && tries < 100*n; tries++ {
		p := low + rand.IntN(high-low)
		if slices.Contains(ports, p) {
			continue
		}
		if !reserve(p) {
			continue // handed out to another test, here or in another package
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue // in use
		}
		// Held open until all are found, so that the n are distinct.
		defer l.Close()
		ports = append(ports, p)
	}
	for len(ports) < n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

var (
	reserving sync.Mutex
	reserved  []*os.File // the ports' locks, see reserve
)

// ephemeralStart is the first port of the kernel's ephemeral range, or
// 0 where it cannot be read.
func ephemeralStart() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	start, err := strconv.Atoi(f[0])
	if err != nil {
		return 0
	}
	return start
}

// ConnectURL opens a client connection to the server at url that is
// closed when the test ends.
func ConnectURL(t testing.TB, url string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("natstest: connect to %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// JetStreamURL returns a JetStream context on a new connection to the
// server at url.
func JetStreamURL(t testing.TB, url string) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(ConnectURL(t, url))
	if err != nil {
		t.Fatalf("natstest: jetstream: %v", err)
	}
	return js
}
