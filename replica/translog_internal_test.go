package replica

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/standin"
	"github.com/gecholog/broker/internal/testutil/natstest"
)

// silenceScript drives a silenceWatch second by second, as the replica
// looks at its broker, and records what it says when.
type silenceScript struct {
	w      *silenceWatch
	t0     time.Time
	heard  time.Time
	chosen map[string]uint64
	said   []string // "12s silent /a/", "40s heard first", ...
}

func newSilenceScript() *silenceScript {
	t0 := time.Date(2026, 11, 28, 20, 0, 0, 0, time.UTC)
	pools := []broker.Pool{{Ingress: "/lat/", Strategy: "latency"}, {Ingress: "/head/", Strategy: "headroom"},
		{Ingress: "/rand/", Strategy: "random"}, {Ingress: "/busy/", Strategy: "least-busy"}, {Ingress: "/def/"}}
	return &silenceScript{w: newSilenceWatch(pools, 10*time.Second, t0), t0: t0, chosen: map[string]uint64{}}
}

// run looks once a second from second from to second to: each second the
// pools in choosing have a call chosen, and when hear is set a
// transaction is heard then.
func (s *silenceScript) run(from, to int, hear bool, choosing ...string) {
	for sec := from; sec <= to; sec++ {
		now := s.t0.Add(time.Duration(sec) * time.Second)
		for _, p := range choosing {
			s.chosen[p]++
		}
		if hear {
			s.heard = now.Add(-time.Millisecond)
		}
		chosen := map[string]uint64{}
		for p, n := range s.chosen {
			chosen[p] = n
		}
		switch ev, pools := s.w.look(now, s.heard, chosen); ev {
		case heardFirst:
			s.said = append(s.said, fmt.Sprint(sec)+"s heard first")
		case heardAgain:
			s.said = append(s.said, fmt.Sprint(sec)+"s heard again")
		case fellSilent:
			s.said = append(s.said, fmt.Sprint(sec)+"s silent "+strings.Join(pools, ","))
		}
	}
}

func TestTheSilenceOfTheTransactionLogIsSaidOnceWhileAPoolThatNeedsItChooses(t *testing.T) {
	for _, tc := range []struct {
		name   string
		script func(s *silenceScript)
		said   []string
	}{
		{"nothing chosen: a silence of minutes is not said", func(s *silenceScript) { s.run(1, 300, false) }, nil},
		{"only pools that do not need the log chose", func(s *silenceScript) { s.run(1, 300, false, "/rand/", "/busy/", "/def/") }, nil},
		{"chosen for 10 s without a word: said once", func(s *silenceScript) {
			s.run(1, 20, false)
			s.run(21, 120, false, "/lat/")
		}, []string{"31s silent /lat/"}},
		{"the pools chosen when it is said are named", func(s *silenceScript) {
			s.run(1, 9, false, "/lat/")
			s.run(10, 11, false, "/lat/", "/head/", "/rand/")
		}, []string{"11s silent /head/,/lat/"}},
		{"heard all along: never said", func(s *silenceScript) { s.run(1, 300, true, "/lat/", "/head/") }, []string{"1s heard first"}},
		{"heard, then silent, then heard again, then silent again", func(s *silenceScript) {
			s.run(1, 5, true, "/lat/")
			s.run(6, 30, false, "/lat/")
			s.run(31, 31, true, "/lat/")
			s.run(32, 50, false, "/lat/")
			s.run(51, 60, true, "/lat/")
		}, []string{"1s heard first", "15s silent /lat/", "31s heard again", "41s silent /lat/", "51s heard again"}},
		{"heard only after it was said", func(s *silenceScript) {
			s.run(1, 12, false, "/head/")
			s.run(13, 13, true)
		}, []string{"11s silent /head/", "13s heard first"}},
		{"calls stopped and came back: a silence since the first is said at once", func(s *silenceScript) {
			s.run(1, 1, false, "/lat/")
			s.run(2, 60, false)
			s.run(61, 61, false, "/lat/")
		}, []string{"61s silent /lat/"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSilenceScript()
			tc.script(s)
			is.New(t).Equal(s.said, tc.said)
		})
	}
}

// TestTransactionsComingFasterThanTheyAreReadAreDroppedAndCounted holds
// the reader still while gecholog publishes more than its queue holds:
// the queue is bounded, the rest dropped, and every transaction is either
// read or counted as dropped, in the log lines too.
func TestTransactionsComingFasterThanTheyAreReadAreDroppedAndCounted(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	var logs syncLog
	r, stop := runOne(t, s.ClientURL(), &logs)
	r.tx.mu.Lock()
	msgs, size, err := r.tx.sub.PendingLimits()
	r.tx.mu.Unlock()
	is.NoErr(err)
	is.Equal(msgs, txPendingMsgs)  // bounded in transactions
	is.Equal(size, txPendingBytes) // and in bytes

	r.tx.calls.mu.Lock() // the reader waits here at its first transaction
	release := sync.OnceFunc(r.tx.calls.mu.Unlock)
	t.Cleanup(release) // before the stop, which waits for the reader
	nc := natstest.Connect(t, s)
	const sent = txPendingMsgs + 100
	data := standin.Transaction(standin.Finished{Ingress: "/azure/", Router: "/azure/gpt4/", Latency: time.Millisecond})
	for range sent {
		is.NoErr(nc.Publish(DefaultLoggerSubject, data))
	}
	is.NoErr(nc.Flush())
	natstest.Eventually(t, 10*time.Second, func() bool { return r.Transactions().Dropped >= sent-txPendingMsgs-1 }, "the queue full")
	release()
	natstest.Eventually(t, 10*time.Second, func() bool { c := r.Transactions(); return c.Read+c.Dropped == sent }, "every transaction read or dropped")
	dropped := r.Transactions().Dropped
	is.True(dropped <= sent-txPendingMsgs) // no more than the queue could not hold
	is.NoErr(stop())

	told := 0
	for _, line := range strings.Split(logs.String(), "\n") {
		var m struct {
			Msg     string `json:"msg"`
			Dropped int    `json:"dropped_transactions"`
		}
		if json.Unmarshal([]byte(line), &m) == nil && m.Msg == "dropping transactions from gecholog's log: they come faster than this replica reads them" {
			told += m.Dropped
		}
	}
	is.Equal(uint64(told), dropped) // the lines add up to every transaction dropped
}

// runOne runs the replica "replica-1" on the server at url, logging in
// JSON to logs, until the test ends or stop is called; stop returns what
// Run did.
func runOne(t *testing.T, url string, logs *syncLog) (r *Replica, stop func() error) {
	t.Helper()
	ready := make(chan *Replica, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{NATS: natsconn.Settings{Servers: url}, ID: "replica-1", Logger: jsonLog(logs),
			Policy: broker.Policy{DisabledTime: time.Minute}, Ready: func(r *Replica) { ready <- r }})
	}()
	stop = sync.OnceValue(func() error { cancel(); return <-done })
	t.Cleanup(func() { _ = stop() })
	select {
	case r = <-ready:
	case err := <-done:
		t.Fatalf("replica stopped before it served: %v", err)
	}
	return r, stop
}

// syncLog is a log safe for the replica's goroutines.
type syncLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *syncLog) Write(p []byte) (int, error) { l.mu.Lock(); defer l.mu.Unlock(); return l.b.Write(p) }
func (l *syncLog) String() string              { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

func jsonLog(w io.Writer) *slog.Logger { return slog.New(slog.NewJSONHandler(w, nil)) }
