package natstest

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// Proxy forwards NATS client connections from a loopback port to a server
// and can hold back what the clients publish, to line up a race that
// would otherwise depend on scheduling: the messages each client sends to
// chosen subjects wait until the test releases them all at once, while
// everything else each client sends, and everything the server sends,
// flows on. It can also stop forwarding anything, both ways, without
// closing a connection (Stall), as a network partition does: packets stop,
// nothing is reset.
type Proxy struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu      sync.Mutex
	conns   map[net.Conn]bool
	hold    func(subject string) bool // nil: forward everything
	deaf    func(subject string) bool // nil: deliver everything
	held    []*heldConn               // connections holding messages, in the order they began
	changed chan struct{}             // closed and replaced when held grows
	closed  bool
	stalled bool
	flowing *sync.Cond // broadcast when stalled or closed changes
	raw     bool       // forward bytes both ways without reading the protocol (StartRawProxy)
	bytes   atomic.Int64
	pings   atomic.Int64 // PING operations seen in a raw proxy's stream
}

// heldConn is the messages one client connection holds, in order.
type heldConn struct {
	id       int
	server   net.Conn
	subjects []string
	msgs     [][]byte
}

// StartProxy listens on a random loopback port and forwards each client
// connection to the NATS server at url (nats://host:port). It stops when
// the test ends.
func StartProxy(t testing.TB, url string) *Proxy {
	t.Helper()
	p, err := NewProxy(url)
	if err != nil {
		t.Fatalf("natstest: %v", err)
	}
	t.Cleanup(p.Close)
	return p
}

// NewProxy is StartProxy for a program; the caller stops it with Close.
func NewProxy(url string) (*Proxy, error) {
	p, err := newProxy(strings.TrimPrefix(url, "nats://"))
	if err != nil {
		return nil, err
	}
	p.start()
	return p, nil
}

// Bytes is how many bytes the proxy has forwarded, both ways.
func (p *Proxy) Bytes() int64 { return p.bytes.Load() }

// Pings counts the PINGs a raw proxy has forwarded, both ways: what a
// route's ping_interval costs on the wire, PONGs aside.
func (p *Proxy) Pings() int64 { return p.pings.Load() }

var pingOp = []byte("PING\r\n")

// ClientURL is the URL clients connect to through the proxy.
func (p *Proxy) ClientURL() string { return "nats://" + p.ln.Addr().String() }

// Hold makes the proxy hold back every message a client publishes to a
// subject hold accepts, in order, until Release. Other messages a client
// sends after a held one go on: requests to the JetStream API, replies.
func (p *Proxy) Hold(hold func(subject string) bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hold = hold
}

// Holding returns how many client connections hold a message to a subject
// that starts with prefix, and a channel closed when any connection holds
// a new message.
func (p *Proxy) Holding(prefix string) (int, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, h := range p.held {
		for _, s := range h.subjects {
			if strings.HasPrefix(s, prefix) {
				n++
				break
			}
		}
	}
	return n, p.changed
}

// Release sends every held message on, each connection's in order, and
// stops holding. It returns the subjects released.
func (p *Proxy) Release() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hold = nil
	return p.pass()
}

// Pass sends every held message on, as Release does, but goes on holding
// those that follow: a test can let a client's publications through one
// at a time, and act before each.
func (p *Proxy) Pass() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pass()
}

// pass sends every held message on. p.mu must be held.
func (p *Proxy) pass() []string {
	var subjects []string
	for _, h := range p.held {
		for _, m := range h.msgs {
			_, _ = h.server.Write(m) // a closed connection loses them, as a crash would
		}
		subjects = append(subjects, h.subjects...)
	}
	p.held = nil
	return subjects
}

// Stall stops forwarding bytes, both ways, on every connection and on
// those accepted later, without closing any: each side's writes fill the
// sockets' buffers and then block, and nothing tells either side the
// link is gone, as when a cable is pulled.
func (p *Proxy) Stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stalled = true
}

// Resume forwards again what waited and what follows.
func (p *Proxy) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stalled = false
	p.flowing.Broadcast()
}

// flow waits while the proxy is stalled; false when it closed meanwhile.
func (p *Proxy) flow() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.stalled && !p.closed {
		p.flowing.Wait()
	}
	return !p.closed
}

// copyFlowing copies from src to dst while the proxy is not stalled.
func (p *Proxy) copyFlowing(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.flow() {
				return
			}
			w, werr := dst.Write(buf[:n])
			p.bytes.Add(int64(w))
			if p.raw {
				// A route's PING is its own line; one split across two
				// reads goes uncounted, which an idle route never does.
				p.pings.Add(int64(bytes.Count(buf[:w], pingOp)))
			}
			if werr != nil {
				return
			}
		}
		if err != nil {
			// A partition carries no FIN either: the other side hears of
			// the close once the link is back.
			p.flow()
			return
		}
	}
}

// Close stops listening, closes every connection and waits for the
// proxy's goroutines.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.closed = true
	p.flowing.Broadcast()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.ln.Close()
	p.wg.Wait()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for id := 1; ; id++ {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			client.Close()
			continue
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			client.Close()
			server.Close()
			return
		}
		p.conns[client], p.conns[server] = true, true
		p.mu.Unlock()
		p.wg.Add(2)
		go func() {
			defer p.wg.Done()
			if p.raw {
				p.copyFlowing(client, server)
			} else {
				p.deliver(client, server)
			}
			p.drop(client, server)
		}()
		go func() {
			defer p.wg.Done()
			if p.raw {
				p.copyFlowing(server, client)
			} else {
				p.forward(id, client, server)
			}
			p.drop(client, server)
		}()
	}
}

func (p *Proxy) drop(conns ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range conns {
		c.Close()
		delete(p.conns, c)
	}
}

// forward copies a client's protocol to the server one operation at a
// time, holding the publications Hold asks for.
func (p *Proxy) forward(id int, client, server net.Conn) {
	r := bufio.NewReaderSize(client, 64<<10)
	var h *heldConn
	for {
		op, subject, err := readOp(r)
		if err != nil {
			p.flow() // the close waits for the link, as in copyFlowing
			return
		}
		p.mu.Lock()
		hold := p.hold
		if hold == nil || subject == "" || !hold(subject) {
			p.mu.Unlock()
			if !p.flow() {
				return
			}
			w, err := server.Write(op)
			p.bytes.Add(int64(w))
			if err != nil {
				return
			}
			continue
		}
		if h == nil || !p.holds(h) {
			h = &heldConn{id: id, server: server}
			p.held = append(p.held, h)
		}
		h.subjects = append(h.subjects, subject)
		h.msgs = append(h.msgs, op)
		close(p.changed)
		p.changed = make(chan struct{})
		p.mu.Unlock()
	}
}

// Deafen makes the proxy drop every message the server delivers to a
// client on a subject deaf accepts, until Hear: the message's own subject,
// which for a JetStream consumer's delivery is the stream's subject
// ($KV.<bucket>.<key>) and for a reply the inbox. Everything else the
// server sends (PING, PONG, INFO, errors) goes on, and so does everything
// the clients send: a client deaf to every message still publishes, and
// its connection stays up, as one cut off from its cluster does.
func (p *Proxy) Deafen(deaf func(subject string) bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.deaf = deaf
}

// Hear delivers every message again from now on; those dropped are gone.
func (p *Proxy) Hear() { p.Deafen(nil) }

// deliver copies the server's protocol to a client one operation at a
// time, dropping the messages Deafen asks for.
func (p *Proxy) deliver(client, server net.Conn) {
	r := bufio.NewReaderSize(server, 64<<10)
	w := bufio.NewWriterSize(client, 64<<10)
	for {
		op, subject, err := readOp(r)
		if err != nil {
			p.flow() // the close waits for the link, as in copyFlowing
			return
		}
		p.mu.Lock()
		deaf := p.deaf
		p.mu.Unlock()
		if deaf == nil || subject == "" || !deaf(subject) {
			if !p.flow() {
				return
			}
			n, err := w.Write(op)
			p.bytes.Add(int64(n))
			if err != nil {
				return
			}
		}
		if r.Buffered() == 0 { // nothing more waiting: send what was read
			if err := w.Flush(); err != nil {
				return
			}
		}
	}
}

// holds reports whether h is still held, not released. p.mu must be held.
func (p *Proxy) holds(h *heldConn) bool {
	for _, x := range p.held {
		if x == h {
			return true
		}
	}
	return false
}

// readOp reads one operation of the NATS client or server protocol, with
// its payload, and returns its bytes and, for PUB, HPUB, MSG and HMSG, its
// subject.
func readOp(r *bufio.Reader) (op []byte, subject string, err error) {
	line, err := r.ReadBytes('\n')
	if err != nil {
		return nil, "", err
	}
	f := strings.Fields(string(line))
	if len(f) < 3 {
		return line, "", nil // PING, PONG, CONNECT {...}, SUB, UNSUB
	}
	switch strings.ToUpper(f[0]) {
	case "PUB", "HPUB", // PUB subject [reply] size; HPUB subject [reply] hdr-size total-size
		"MSG", "HMSG": // MSG subject sid [reply] size; HMSG subject sid [reply] hdr-size total-size
	default:
		return line, "", nil
	}
	size, err := strconv.Atoi(f[len(f)-1])
	if err != nil || size < 0 {
		return nil, "", fmt.Errorf("natstest: proxy: bad size in %q", bytes.TrimSpace(line))
	}
	payload := make([]byte, size+2) // and its CRLF
	if _, err := io.ReadFull(r, payload); err != nil {
		return nil, "", err
	}
	return append(line, payload...), f[1], nil
}
