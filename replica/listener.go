package replica

import (
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// The HTTP listener (status page, /metrics, /healthz, /readyz) has no
// authentication, so what one client can hold open is bounded.
const (
	// DefaultHTTPIdleTimeout is how long a keep-alive connection may sit
	// idle between requests before the listener closes it: longer than
	// Prometheus' usual 15 s between scrapes, so a scraper keeps its one
	// connection.
	DefaultHTTPIdleTimeout = 60 * time.Second
	// DefaultHTTPMaxConns bounds the connections open at once, each a
	// goroutine: twice the 64 status pages that may stream at once, with
	// room for scrapes and health checks.
	DefaultHTTPMaxConns = 128
)

// connLimit is a listener that keeps at most max connections open. When a
// new one would pass the bound, it closes the connection that has been
// idle longest, a keep-alive between requests, so that idle connections
// cannot crowd out a health check; when none is idle, the new connection
// waits in the listen backlog until one closes. A connection whose request
// headers are slow to come is closed by the server's ReadHeaderTimeout,
// and one idle too long by its IdleTimeout.
type connLimit struct {
	net.Listener
	max int
	log *slog.Logger

	mu     sync.Mutex
	cond   *sync.Cond
	open   map[*limitedConn]time.Time // idle since; zero while not idle
	closed bool
	warned bool // said so once since the listener was last below max
}

func newConnLimit(ln net.Listener, max int, log *slog.Logger) *connLimit {
	l := &connLimit{Listener: ln, max: max, log: log, open: map[*limitedConn]time.Time{}}
	l.cond = sync.NewCond(&l.mu)
	return l
}

// Accept waits until there is room, making it by closing the longest idle
// connection if need be, then accepts the next connection.
func (l *connLimit) Accept() (net.Conn, error) {
	l.mu.Lock()
	for len(l.open) >= l.max && !l.closed {
		if oldest := l.oldestIdle(); oldest != nil {
			l.open[oldest] = time.Time{} // being closed: not chosen twice
			l.mu.Unlock()
			oldest.Close()
			l.mu.Lock()
			continue
		}
		if !l.warned {
			l.warned = true
			l.log.Warn("HTTP listener has as many connections open as it allows, none idle; new ones wait until one closes",
				slog.Int("max_connections", l.max))
		}
		l.cond.Wait()
	}
	if len(l.open) < l.max/2 {
		l.warned = false
	}
	l.mu.Unlock()
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	lc := &limitedConn{Conn: c, l: l}
	l.mu.Lock()
	l.open[lc] = time.Time{}
	l.mu.Unlock()
	return lc, nil
}

// Close stops accepting; a waiting Accept returns the listener's error.
func (l *connLimit) Close() error {
	l.mu.Lock()
	l.closed = true
	l.cond.Broadcast()
	l.mu.Unlock()
	return l.Listener.Close()
}

// oldestIdle is the connection idle longest, or nil. l.mu must be held.
func (l *connLimit) oldestIdle() *limitedConn {
	var oldest *limitedConn
	var since time.Time
	for c, t := range l.open {
		if !t.IsZero() && (oldest == nil || t.Before(since)) {
			oldest, since = c, t
		}
	}
	return oldest
}

// connState is the server's ConnState hook: it keeps which connections
// are idle, and wakes a waiting Accept when one becomes so.
func (l *connLimit) connState(c net.Conn, st http.ConnState) {
	lc, ok := c.(*limitedConn)
	if !ok {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, open := l.open[lc]; !open {
		return
	}
	switch st {
	case http.StateIdle:
		l.open[lc] = time.Now()
		l.cond.Broadcast()
	case http.StateActive:
		l.open[lc] = time.Time{}
	}
}

// limitedConn gives its place back when closed.
type limitedConn struct {
	net.Conn
	l    *connLimit
	once sync.Once
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.open, c)
		c.l.cond.Broadcast()
		c.l.mu.Unlock()
	})
	return err
}
