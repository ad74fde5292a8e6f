package replica_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/replica"
)

// listening runs a replica with its HTTP listener on a free loopback port
// and the listener settings of c, and returns the listener's address and
// the replica's log.
func listening(t *testing.T, c replica.Config) (addr string, logs *syncBuffer) {
	t.Helper()
	s := natstest.Start(t)
	logs = &syncBuffer{}
	c.NATS = natsconn.Settings{Servers: s.ClientURL()}
	c.Policy = broker.Policy{DisabledTime: time.Minute}
	c.MetricsAddr = "127.0.0.1:0"
	c.ID = "replica-1"
	c.Logger = jsonLogger(logs)
	startReplica(t, c)
	l, ok := logLine(logs.String(), "metrics listening")
	if !ok {
		t.Fatal("the replica logged no listener address")
	}
	return l["addr"].(string), logs
}

// keptAlive is a client connection that has made one request and is
// kept open for more, as a browser or a scraper keeps it.
type keptAlive struct {
	net.Conn
	r *bufio.Reader
}

// keepAlive connects to addr and GETs path once, keeping the connection.
func keepAlive(t *testing.T, addr, path string) *keptAlive {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	k := &keptAlive{Conn: c, r: bufio.NewReader(c)}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: broker\r\n\r\n"); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	resp, err := http.ReadResponse(k.r, nil)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Close {
		t.Fatalf("GET %s: %s, close %v", path, resp.Status, resp.Close)
	}
	c.SetDeadline(time.Time{})
	return k
}

// closedWithin reports whether the server closes k within d.
func (k *keptAlive) closedWithin(d time.Duration) bool {
	k.SetReadDeadline(time.Now().Add(d))
	_, err := k.r.ReadByte()
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

func TestIdleHTTPConnectionsAreClosedAfterTheIdleTimeout(t *testing.T) {
	is := is.New(t)
	const idle = 300 * time.Millisecond
	addr, _ := listening(t, replica.Config{HTTPIdleTimeout: idle})
	var conns []*keptAlive
	for range 5 {
		conns = append(conns, keepAlive(t, addr, "/healthz"))
	}
	start := time.Now()
	for _, k := range conns {
		is.True(k.closedWithin(10 * time.Second)) // the server closed the idle connection
	}
	t.Logf("5 idle connections closed %v after their last answer", time.Since(start).Round(time.Millisecond))
	is.True(time.Since(start) >= idle-50*time.Millisecond) // and not before it was idle that long
}

func TestIdleConnectionsCannotCrowdOutAHealthCheck(t *testing.T) {
	is := is.New(t)
	const most = 8
	addr, _ := listening(t, replica.Config{HTTPMaxConns: most, HTTPIdleTimeout: time.Hour})
	// Many more idle keep-alive connections than the listener keeps: each
	// is answered, the longest idle closed to make room.
	var conns []*keptAlive
	for range 4 * most {
		conns = append(conns, keepAlive(t, addr, "/healthz"))
	}
	// A health check is answered at once.
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/healthz")
	is.NoErr(err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	is.Equal(string(body), "ok\n")
	c.CloseIdleConnections()

	// Closing a connection happens before the next is accepted: those
	// closed are closed by now, and the listener kept at most most open.
	open := 0
	for _, k := range conns {
		if !k.closedWithin(500 * time.Millisecond) {
			open++
		}
	}
	t.Logf("%d of %d idle connections still open", open, len(conns))
	is.True(open <= most) // no more open than the bound
	is.True(open > 0)     // the newest are kept
}

func TestConnectionsPastTheBoundWaitUntilOneCloses(t *testing.T) {
	is := is.New(t)
	const most = 4
	addr, logs := listening(t, replica.Config{HTTPMaxConns: most})
	// Open status pages hold their connections busy: none is idle.
	var cancels []context.CancelFunc
	for range most {
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		cancels = append(cancels, cancel)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/events", nil)
		tr := &http.Transport{}
		t.Cleanup(tr.CloseIdleConnections)
		resp, err := tr.RoundTrip(req)
		is.NoErr(err)
		is.Equal(resp.StatusCode, http.StatusOK)
		t.Cleanup(func() { resp.Body.Close() })
		line, err := bufio.NewReader(resp.Body).ReadString('\n')
		is.NoErr(err)
		is.Equal(line, "retry: 1000\n") // the stream is open
	}
	natstest.Eventually(t, 5*time.Second, func() bool {
		_, full := logLine(logs.String(), "HTTP listener has as many connections open as it allows, none idle; new ones wait until one closes")
		return full
	}, "the listener says it is full")

	answered := make(chan error, 1)
	go func() {
		c := http.Client{Timeout: 30 * time.Second}
		resp, err := c.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			c.CloseIdleConnections()
		}
		answered <- err
	}()
	select {
	case err := <-answered:
		t.Fatalf("a health check past the bound was answered while every connection was busy: %v", err)
	default: // it waits: the listener accepts nothing while full
	}
	cancels[0]() // one page closes
	select {
	case err := <-answered:
		is.NoErr(err) // the waiting health check is answered
	case <-time.After(15 * time.Second):
		t.Fatal("the health check was not answered after a page closed")
	}
	says(t, "the log", logs.String(), `"max_connections":4`) // the listener said its bound
}
