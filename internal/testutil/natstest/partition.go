package natstest

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Cluster is embedded nats-servers whose routes each pass through a proxy
// of their own, so that a node can be cut off from the others as a
// network partition does (packets stop, nothing is reset) while its
// clients still reach it, and healed again. Each node also tells clients
// to reach it through a proxy of its own (LinkURL), so that the clients
// that do can be cut off with it.
type Cluster struct {
	Servers []*server.Server
	// routes[i][j] carries the routes node i dials to node j.
	routes [][]*Proxy
	links  []*Proxy // links[i] carries the clients that reach node i by LinkURL
	dir    string
}

// StartPartitionable starts n nodes (n1, n2, ...) with JetStream, each
// dialling every other through a proxy, and returns once the JetStream
// meta group has a leader that counts every node. A node advertises no
// route address of its own, so that no node dials another around the
// proxies. It all stops when the test ends.
func StartPartitionable(t testing.TB, n int, opts ...Option) *Cluster {
	t.Helper()
	c, err := NewPartitionable(n, opts...)
	if err != nil {
		t.Fatalf("natstest: partitionable cluster: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// NewPartitionable is StartPartitionable for a program rather than a
// test (broker-bench -mode partition): the caller stops the cluster with
// Close. Its servers log nothing.
func NewPartitionable(n int, opts ...Option) (_ *Cluster, err error) {
	dir, err := os.MkdirTemp("", "natstest-partition-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{routes: make([][]*Proxy, n), links: make([]*Proxy, n), dir: dir}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	ports, err := FreePorts(2 * n)
	if err != nil {
		return nil, err
	}
	for i := range n {
		if c.links[i], err = NewRawProxy(fmt.Sprintf("127.0.0.1:%d", ports[i])); err != nil {
			return nil, err
		}
		c.routes[i] = make([]*Proxy, n)
		for j := range n {
			if i != j {
				if c.routes[i][j], err = NewRawProxy(fmt.Sprintf("127.0.0.1:%d", ports[n+j])); err != nil {
					return nil, err
				}
			}
		}
	}
	for i := range n {
		o := &server.Options{
			ServerName: fmt.Sprintf("n%d", i+1),
			Host:       "127.0.0.1",
			Port:       ports[i],
			JetStream:  true,
			StoreDir:   fmt.Sprintf("%s/n%d", dir, i+1),
			NoLog:      true,
			NoSigs:     true,
			Cluster: server.ClusterOpts{Name: "natstest", Host: "127.0.0.1", Port: ports[n+i],
				Advertise: "127.0.0.1:1"}, // nobody listens there: routes go through the proxies only
			// Clients learn every node by its link, never around it.
			ClientAdvertise: c.links[i].Addr(),
		}
		for j := range n {
			if j != i {
				o.Routes = append(o.Routes, &url.URL{Scheme: "nats-route", Host: c.routes[i][j].Addr()})
			}
		}
		for _, opt := range opts {
			opt(o)
		}
		s, err := server.NewServer(o)
		if err != nil {
			return nil, fmt.Errorf("new server %s: %w", o.ServerName, err)
		}
		c.Servers = append(c.Servers, s)
		go s.Start()
	}
	for _, s := range c.Servers {
		if !s.ReadyForConnections(ReadyWithin) {
			return nil, fmt.Errorf("node %s not ready within %v", s.Name(), ReadyWithin)
		}
	}
	deadline := time.Now().Add(ReadyWithin)
	for !c.metaLeaderKnowsAll() {
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no JetStream meta leader that knows all %d nodes within %v", n, ReadyWithin)
		}
		time.Sleep(5 * time.Millisecond) // polling the servers' own state
	}
	return c, nil
}

func (c *Cluster) metaLeaderKnowsAll() bool {
	for _, s := range c.Servers {
		if s.JetStreamIsLeader() && len(s.JetStreamClusterPeers()) == len(c.Servers) {
			return true
		}
	}
	return false
}

// Close shuts every node down, stops the proxies and removes the nodes'
// stores.
func (c *Cluster) Close() {
	for _, s := range c.Servers {
		s.Shutdown()
	}
	for _, s := range c.Servers {
		s.WaitForShutdown()
	}
	for _, p := range c.links {
		if p != nil {
			p.Close()
		}
	}
	for _, row := range c.routes {
		for _, p := range row {
			if p != nil {
				p.Close()
			}
		}
	}
	os.RemoveAll(c.dir)
}

// LinkURL is the URL node i gives clients, through a proxy CutClients
// stalls: a client given it, or that learned it from the cluster, is cut
// off with the node; one given Servers[i].ClientURL() is not.
func (c *Cluster) LinkURL(i int) string { return "nats://" + c.links[i].Addr() }

// CutClients stops the links of the clients that reach node i by its
// LinkURL, both ways, without closing one.
func (c *Cluster) CutClients(i int) { c.links[i].Stall() }

// HealClients lets them flow again.
func (c *Cluster) HealClients(i int) { c.links[i].Resume() }

// Cut stops every route between node i and the others, both ways,
// without closing a connection.
func (c *Cluster) Cut(i int) {
	for j := range c.routes {
		if j != i {
			c.routes[i][j].Stall()
			c.routes[j][i].Stall()
		}
	}
}

// Heal lets node i's routes flow again.
func (c *Cluster) Heal(i int) {
	for j := range c.routes {
		if j != i {
			c.routes[i][j].Resume()
			c.routes[j][i].Resume()
		}
	}
}

// RouteBytes is how many bytes every route proxy has forwarded, both
// ways, since the cluster started, and how many PINGs among them: what
// the routes cost on the wire.
func (c *Cluster) RouteBytes() (bytes, pings int64) {
	for _, row := range c.routes {
		for _, p := range row {
			if p != nil {
				bytes += p.Bytes()
				pings += p.Pings()
			}
		}
	}
	return bytes, pings
}

// StartRawProxy forwards every connection from a loopback port to addr
// (host:port) byte for byte, whatever the protocol (a route's, say), and
// can Stall and Resume as Proxy does. It stops when the test ends.
func StartRawProxy(t testing.TB, addr string) *Proxy {
	t.Helper()
	p, err := NewRawProxy(addr)
	if err != nil {
		t.Fatalf("natstest: proxy: %v", err)
	}
	t.Cleanup(p.Close)
	return p
}

// NewRawProxy is StartRawProxy for a program; the caller stops it with
// Close.
func NewRawProxy(addr string) (*Proxy, error) {
	p, err := newProxy(addr)
	if err != nil {
		return nil, err
	}
	p.raw = true
	p.start()
	return p, nil
}

func newProxy(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	p := &Proxy{ln: ln, target: target, conns: map[net.Conn]bool{}, changed: make(chan struct{})}
	p.flowing = sync.NewCond(&p.mu)
	return p, nil
}

func (p *Proxy) start() {
	p.wg.Add(1)
	go p.accept()
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Lead has node i lead stream (a step-down that prefers it, again until
// it does: the server refuses one while i's copy is not current, as right
// after the stream was made) and returns once it does; nc is any client
// of the cluster.
func (c *Cluster) Lead(t testing.TB, nc *nats.Conn, stream string, i int) {
	t.Helper()
	leads := func() bool { return c.Servers[i].JetStreamIsStreamLeader("$G", stream) }
	req := fmt.Sprintf(`{"placement":{"preferred":%q}}`, c.Servers[i].Name())
	var said string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		if leads() {
			return
		}
		if m, err := nc.Request("$JS.API.STREAM.LEADER.STEPDOWN."+stream, []byte(req), 5*time.Second); err != nil {
			said = err.Error()
		} else {
			said = string(m.Data)
		}
		for wait := time.Now().Add(2 * time.Second); time.Now().Before(wait) && !leads(); {
			time.Sleep(10 * time.Millisecond) // polling the server's own state
		}
	}
	t.Fatalf("natstest: %s not leading %s within 30s; the last step-down said %s", c.Servers[i].Name(), stream, said)
}
