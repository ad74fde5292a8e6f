package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/matryer/is"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/gecholog/broker/internal/testutil/natstest"
)

// killCallTimeout is how long a caller of the load below waits for an
// answer, as gecholog waits its processor timeout: a call handed to a
// replica that dies is lost, and costs its caller this long.
const killCallTimeout = time.Second

// Not parallel: the bound on lost calls holds whatever the machine's load,
// but a call that times out on a starved machine would be counted as lost.
func TestReplicaKilledMidLoadCostsAtMostTheCallsInFlightOnIt(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	replicas := startReplicas(t, s, 3)
	nc := natstest.Connect(t, s)

	// Callers make request contexts back to back through the queue group,
	// as gecholog does for each client call, until the test has seen what
	// it needs.
	const callers = 4
	load := natstest.StartLoad(t, nc, callers, brokerTopic, fmt.Appendf(nil, `{"gl_path":%q}`, ingress), killCallTimeout, func(m *nats.Msg) error {
		if !bytes.HasPrefix(m.Data, []byte(`{"gl_path":"/azure/`)) {
			return fmt.Errorf("reply %q is not a router of the pool", m.Data)
		}
		return nil
	})
	load.WaitAnswered(t, time.Time{}, 300, 15*time.Second)

	victim := replicas[1]
	killed := time.Now()
	victim.signal(t, syscall.SIGKILL)
	is.Equal(victim.exitCode(t, 5*time.Second), -1) // ended by the signal, with no chance to drain
	// The kernel closes the dead process's socket; the server then stops
	// handing it calls.
	natstest.Eventually(t, 5*time.Second, func() bool { return !serverHasClient(t, s, "gecholog-broker "+victim.id) },
		"the server drops %s's connection", victim.id)
	gone := time.Now()
	load.WaitAnswered(t, gone, 300, 15*time.Second)
	calls := load.Finish()

	var failed, timeouts, failedAfter, sentBefore int
	var answered []time.Time
	for _, c := range calls {
		if c.Err == nil {
			answered = append(answered, c.End)
			continue
		}
		failed++
		if errors.Is(c.Err, nats.ErrTimeout) {
			timeouts++
		} else {
			t.Errorf("call failed other than by a timeout: %v", c.Err)
		}
		if c.Start.Before(killed) {
			sentBefore++
		}
		if c.Start.After(gone) {
			failedAfter++
		}
	}
	slices.SortFunc(answered, func(a, b time.Time) int { return a.Compare(b) })
	var pause time.Duration
	for i := 1; i < len(answered); i++ {
		pause = max(pause, answered[i].Sub(answered[i-1]))
	}
	t.Logf("SIGKILL of %s mid-load: the server dropped its connection %v later; %d calls by %d callers, %d lost (timed out after %v): "+
		"%d sent before the signal, %d after it, before the server knew; longest pause between answers %v",
		victim.id, gone.Sub(killed).Round(time.Microsecond), len(calls), callers, failed, killCallTimeout,
		sentBefore, failed-sentBefore, pause.Round(time.Millisecond))
	if failed > callers {
		t.Errorf("%d calls lost, more than the %d in flight at once", failed, callers)
	}
	is.Equal(failed, timeouts) // lost, not refused: the others were there all along
	is.Equal(failedAfter, 0)   // once the server knows, every call is answered
	for _, r := range replicas {
		if r != victim {
			select {
			case <-r.exited:
				t.Errorf("%s exited: %v", r.id, r.state)
			default: // still serving
			}
		}
	}
}

// README, Design, Faults: "The processor subscription holds at most 64 Ki
// calls (32 MiB) waiting: a burst of 50,000 is answered in full, and beyond
// that the newest calls are dropped with one log line" (and one at most
// every 10 s while drops go on, with the count). The replica keeps serving
// afterwards. Not parallel: the burst takes both cores for seconds.
func TestCallsBeyondTheWaitingLimitAreDroppedAndTheReplicaServesOn(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	// A replica answers calls about as fast as the server, in this
	// race-instrumented test process, delivers them, so no burst of a
	// bounded size overflows its queue reliably. One whose handler stands
	// does: at debug level the replica logs every call it answers, and
	// while this test holds its log the pipe fills and the handler waits on
	// it. Debug lines are counted, not kept.
	r := startReplica(t, replicaEnv(s, "replica-1", "BROKER_LOG_LEVEL", "debug"), countingDebugLines)
	c := newCalls(t, natstest.Connect(t, s))
	conn := serverClient(t, s, "gecholog-broker "+r.id)
	if conn == nil {
		t.Fatalf("the server has no connection from %s", r.id)
	}

	const limit = 1 << 16    // calls a replica holds waiting
	const n = limit + 36<<10 // the burst: 100 Ki calls, 36 Ki beyond the limit
	release := r.holdLog(t)
	for i := range n {
		c.publish(t, i, askRouter)
	}
	c.flush(t)
	// The burst reaches the replica before its handler moves again: the
	// server has written it all to the replica's connection, and the
	// connection's reader, which logs nothing, has taken it out of the
	// socket (the last read may still be parsed as the handler resumes).
	natstest.Eventually(t, 10*time.Second, func() bool {
		conn := serverClient(t, s, "gecholog-broker "+r.id)
		if conn == nil || conn.OutMsgs < n || conn.Pending != 0 {
			return false
		}
		unread, ok := unreadBytes(conn.Port)
		return ok && unread == 0
	}, "%s takes in the whole burst", r.id)
	release()

	// The replica answers its calls in order and this test receives the
	// replies in order, so once a call sent after the burst is answered,
	// every answer to the burst has arrived. While the queue is full, such
	// a call is dropped too: send another.
	after := n
	for deadline := time.Now().Add(30 * time.Second); ; after++ {
		c.publish(t, after, askRouter)
		if c.answered(after, 2*time.Second) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("none of the %d calls sent after the burst answered within 30s", after-n+1)
		}
	}
	unansweredAfter := after - n

	dropped := 0
	for i := range n {
		a, ok := c.answer(i)
		switch {
		case !ok && i < limit:
			t.Errorf("call %d of the burst was dropped, within the first %d the replica holds", i, limit)
		case !ok:
			dropped++
		case !slices.Contains(pool, routerOf(t, a.msg)):
			t.Errorf("call %d answered %q", i, a.msg.Data)
		}
	}
	is.True(dropped > 0)                     // calls beyond the limit were dropped
	is.Equal(s.NumSlowConsumers(), int64(0)) // by the replica's own queue: the server dropped nothing
	now := serverClient(t, s, "gecholog-broker "+r.id)
	is.True(now != nil)         // and kept the replica connected
	is.Equal(now.Cid, conn.Cid) // on the connection it had before the burst

	// The operator hears of it in one line, and of calls still dropped
	// after it in at most one line every 10 s, each with the calls dropped
	// since the line before, and the rest when the replica stops: the
	// lines add up to every call dropped.
	r.signal(t, syscall.SIGTERM)
	is.Equal(r.exitCode(t, 30*time.Second), 0)
	errs := r.linesSince(0, line{"an error", func(l logLine) bool { return l.level == "ERROR" }})
	is.True(len(errs) > 0) // the drop is logged
	told := 0
	for i, l := range errs {
		is.Equal(l.msg, "NATS error")
		is.Equal(l.attrs["error"], nats.ErrSlowConsumer.Error())
		is.Equal(l.attrs["subject"], brokerTopic)
		d, err := strconv.Atoi(l.attrs["dropped_calls"])
		is.NoErr(err)
		is.True(d > 0) // each line tells of calls dropped
		told += d
		total, err := strconv.Atoi(l.attrs["dropped_calls_total"])
		is.NoErr(err)
		is.Equal(total, told) // a running total
		if i > 0 && i < len(errs)-1 {
			is.True(l.at.Sub(errs[i-1].at) >= 10*time.Second) // at most one line every 10 s, but for the last at stop
		}
	}
	// Every call of the burst dropped, and nothing else: a call sent after
	// it and unanswered within 2 s was dropped, or answered late.
	if told < dropped || told > dropped+unansweredAfter {
		t.Errorf("the error lines tell of %d calls dropped; the test saw %d of the burst dropped and %d after it unanswered", told, dropped, unansweredAfter)
	}
	t.Logf("a burst of %d calls: %d dropped, none of the first %d; %d calls after the burst dropped before one was answered; %d error lines telling %d dropped; %d debug lines",
		n, dropped, limit, unansweredAfter, len(errs), told, r.debug.Load())
}

// unreadBytes is how much the loopback TCP socket on local port has
// received that its process has not read yet (rx_queue in /proc/net/tcp).
func unreadBytes(port int) (int, bool) {
	data, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return 0, false
	}
	local := fmt.Sprintf("0100007F:%04X", port) // 127.0.0.1, as /proc/net/tcp writes it
	for _, row := range strings.Split(string(data), "\n")[1:] {
		// sl local_address rem_address st tx_queue:rx_queue ...
		f := strings.Fields(row)
		if len(f) < 5 || f[1] != local {
			continue
		}
		_, rx, _ := strings.Cut(f[4], ":")
		n, err := strconv.ParseUint(rx, 16, 32)
		return int(n), err == nil
	}
	return 0, false
}

// serverHasClient reports whether s has a client connection called name.
func serverHasClient(t *testing.T, s *server.Server, name string) bool {
	t.Helper()
	return serverClient(t, s, name) != nil
}

// serverClient returns what s says of its client connection called name,
// or nil.
func serverClient(t *testing.T, s *server.Server, name string) *server.ConnInfo {
	t.Helper()
	cz, err := s.Connz(&server.ConnzOptions{})
	if err != nil {
		t.Fatalf("connz: %v", err)
	}
	for _, c := range cz.Conns {
		if c.Name == name {
			return c
		}
	}
	return nil
}
