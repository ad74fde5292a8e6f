package natstest

import (
	"fmt"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Cluster is embedded nats-servers whose routes each pass through a proxy
// of their own, so that a node can be cut off from the others as a
// network partition does (packets stop, nothing is reset) while its
// clients still reach it, and healed again.
type Cluster struct {
	Servers []*server.Server
	// routes[i][j] carries the routes node i dials to node j.
	routes [][]*Proxy
}

// StartPartitionable starts n nodes (n1, n2, ...) with JetStream, each
// dialling every other through a proxy, and returns once the JetStream
// meta group has a leader that counts every node. A node advertises no
// route address of its own, so that no node dials another around the
// proxies.
func StartPartitionable(t testing.TB, n int, opts ...Option) *Cluster {
	t.Helper()
	ports, err := freePorts(2 * n)
	if err != nil {
		t.Fatalf("natstest: partitionable cluster: %v", err)
	}
	c := &Cluster{routes: make([][]*Proxy, n)}
	for i := range n {
		c.routes[i] = make([]*Proxy, n)
		for j := range n {
			if i != j {
				c.routes[i][j] = StartRawProxy(t, fmt.Sprintf("127.0.0.1:%d", ports[n+j]))
			}
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
			Cluster: server.ClusterOpts{Name: "natstest", Host: "127.0.0.1", Port: ports[n+i],
				Advertise: "127.0.0.1:1"}, // nobody listens there: routes go through the proxies only
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
			t.Fatalf("natstest: new server %s: %v", o.ServerName, err)
		}
		c.Servers = append(c.Servers, s)
		go s.Start()
		t.Cleanup(func() {
			s.Shutdown()
			s.WaitForShutdown()
		})
	}
	for _, s := range c.Servers {
		if !s.ReadyForConnections(10 * time.Second) {
			t.Fatalf("natstest: node %s not ready within 10s", s.Name())
		}
	}
	Eventually(t, 30*time.Second, func() bool {
		for _, s := range c.Servers {
			if s.JetStreamIsLeader() && len(s.JetStreamClusterPeers()) == n {
				return true
			}
		}
		return false
	}, "a JetStream meta leader that knows all %d nodes", n)
	return c
}

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

// StartRawProxy forwards every connection from a loopback port to addr
// (host:port) byte for byte, whatever the protocol (a route's, say), and
// can Stall and Resume as Proxy does. It stops when the test ends.
func StartRawProxy(t testing.TB, addr string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("natstest: proxy: %v", err)
	}
	p := &Proxy{ln: ln, target: addr, conns: map[net.Conn]bool{}, changed: make(chan struct{}), raw: true}
	p.flowing = sync.NewCond(&p.mu)
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }
