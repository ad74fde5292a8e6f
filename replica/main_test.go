package replica_test

import (
	"bufio"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"go.uber.org/goleak"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natstest"
)

// TestMain fails the package's tests if any goroutine outlives them: every
// replica stopped, every server shut down.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// syncBuffer is a buffer safe for the goroutines that write to it.
type syncBuffer = natstest.Buffer

// jsonLogger logs JSON lines to w, as the broker command does.
func jsonLogger(w io.Writer) *slog.Logger { return slog.New(slog.NewJSONHandler(w, nil)) }

// logLine finds the first JSON log line with msg and returns its fields.
func logLine(out, msg string) (map[string]any, bool) {
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil && m["msg"] == msg {
			return m, true
		}
	}
	return nil, false
}

// countLines counts JSON log lines with msg logged from..to.
func countLines(out, msg string, from, to time.Time) int {
	n := 0
	for _, line := range strings.Split(out, "\n") {
		var m struct {
			Time time.Time `json:"time"`
			Msg  string    `json:"msg"`
		}
		if json.Unmarshal([]byte(line), &m) == nil && m.Msg == msg && !m.Time.Before(from) && m.Time.Before(to) {
			n++
		}
	}
	return n
}

// freePort finds a loopback port nobody listens on, for a server that
// must come back on the same address.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func onPort(port int) natstest.Option { return func(o *server.Options) { o.Port = port } }

func phaseIs(router string, ph broker.Phase) func(*broker.Broker) bool {
	return func(b *broker.Broker) bool { return b.Phase(router) == ph }
}
