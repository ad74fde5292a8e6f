package replica_test

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matryer/is"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/replica"
)

// runUntilStopped runs one replica with c until the returned stop is
// called; stop returns Run's error once Run has returned.
func runUntilStopped(t *testing.T, c replica.Config) (*replica.Replica, func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan *replica.Replica, 1)
	done := make(chan error, 1)
	c.Ready = func(r *replica.Replica) { ready <- r }
	go func() { done <- replica.Run(ctx, c) }()
	stop := func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(30 * time.Second):
			t.Fatal("replica did not stop within 30s")
			return nil
		}
	}
	select {
	case r := <-ready:
		return r, stop
	case err := <-done:
		t.Fatalf("replica stopped before it served: %v", err)
	case <-time.After(15 * time.Second):
		stop()
		t.Fatal("replica not ready within 15s")
	}
	return nil, nil
}

// TestAStoppedReplicaLeavesNoGoroutine runs a replica through a disable
// (a bucket write, the broker's timer, in expiry mode the janitor's) and a
// metrics scrape, stops it, and finds that every goroutine it started has
// ended: its connection's, its subscription's, its watcher's, its writes',
// its timers', its listener's and, in local mode, the one looking for
// JetStream.
func TestAStoppedReplicaLeavesNoGoroutine(t *testing.T) {
	for _, tc := range []struct {
		name   string
		opts   []natstest.Option
		bucket *jetstream.KeyValueConfig // created before the replica starts
		mode   string
	}{
		{"ttl mode", nil, &jetstream.KeyValueConfig{Bucket: replica.DefaultBucket, LimitMarkerTTL: time.Hour}, "ttl"},
		{"expiry mode", nil, &jetstream.KeyValueConfig{Bucket: replica.DefaultBucket}, "expiry"},
		{"local mode", []natstest.Option{natstest.WithoutJetStream()}, nil, "local"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			is := is.New(t)
			s := natstest.Start(t, tc.opts...)
			nc := natstest.Connect(t, s)
			if tc.bucket != nil {
				// Created here, so that the server's goroutines for the
				// bucket's stream are not the replica's.
				js, err := jetstream.New(nc)
				is.NoErr(err)
				_, err = js.CreateKeyValue(context.Background(), *tc.bucket)
				is.NoErr(err)
			}
			before := goleak.IgnoreCurrent() // the server's and the test client's
			r, stop := runUntilStopped(t, replica.Config{
				NATS:        natsconn.Settings{Servers: s.ClientURL()},
				Policy:      broker.Policy{DisabledTime: time.Minute},
				MetricsAddr: "127.0.0.1:0",
				Reattach:    time.Hour, // local mode keeps looking, and stopping must end that
			})
			is.Equal(r.Mode(), tc.mode)
			_, err := nc.Request(replica.DefaultSubject, []byte(`{"gl_path":"/azure/dud/","egress_status_code":502}`), 2*time.Second)
			is.NoErr(err)
			m, err := nc.Request(replica.DefaultSubject, []byte(`{"gl_path":"/azure/"}`), 2*time.Second)
			is.NoErr(err)
			is.True(!strings.Contains(string(m.Data), "/azure/dud/")) // the stopped replica no longer chooses the disabled router
			if tc.mode != "local" {
				natstest.Eventually(t, 5*time.Second, func() bool { return r.Broker().Stats().KVWrites == 1 }, "the disable written")
			}
			is.NoErr(stop())
			nc.Close() // and with it the reply subscription its first request started
			goleak.VerifyNone(t, before)
		})
	}
}

// TestAReplicaWhoseDrainTimesOutStopsAndLeavesNoGoroutine stops a replica
// holding more calls than it can answer in its drain time: it gives up on
// them, says so, and still leaves nothing running.
func TestAReplicaWhoseDrainTimesOutStopsAndLeavesNoGoroutine(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	nc := natstest.Connect(t, s)
	js, err := jetstream.New(nc)
	is.NoErr(err)
	_, err = js.CreateKeyValue(context.Background(), jetstream.KeyValueConfig{Bucket: replica.DefaultBucket, LimitMarkerTTL: time.Hour})
	is.NoErr(err)
	var logs syncBuffer
	hold := &holdChoice{Handler: slog.NewJSONHandler(&logs, nil), once: new(sync.Once), holding: make(chan struct{}), release: make(chan struct{})}
	before := goleak.IgnoreCurrent()
	r, stop := runUntilStopped(t, replica.Config{
		NATS:         natsconn.Settings{Servers: s.ClientURL()},
		Policy:       broker.Policy{DisabledTime: time.Minute},
		Logger:       slog.New(hold),
		DrainTimeout: time.Millisecond,
	})
	// The replica's handler is held inside its first call, so that every
	// call sent after it waits in the replica's queue: it holds more than
	// it can answer in its drain time, on a fast machine as on a busy one.
	// Replies go to an inbox nobody reads.
	inbox := nats.NewInbox()
	const sent = 1001
	is.NoErr(nc.PublishRequest(replica.DefaultSubject, inbox, []byte(`{"gl_path":"/azure/"}`)))
	<-hold.holding
	for range sent - 1 {
		is.NoErr(nc.PublishRequest(replica.DefaultSubject, inbox, []byte(`{"gl_path":"/azure/"}`)))
	}
	// The server has passed every call on to the replica before the
	// replica, stopping, unsubscribes.
	is.NoErr(nc.Flush())
	const gaveUp = "calls still in flight after 1ms; stopping anyway"
	released := make(chan struct{})
	go func() {
		defer close(released)
		defer close(hold.release)
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			if _, ok := logLine(logs.String(), gaveUp); ok {
				return
			}
		}
	}()
	is.NoErr(stop())
	<-released
	nc.Close()
	_, ok := logLine(logs.String(), gaveUp)
	is.True(ok) // the drain did time out
	answered := r.Broker().Stats().Calls[broker.Chosen]
	is.True(answered < sent) // some calls were never handled
	goleak.VerifyNone(t, before)
	is.Equal(r.Broker().Stats().Calls[broker.Chosen], answered) // and none reached the broker after it stopped
}

// holdChoice logs what its Handler does from Info up, and holds the first
// call the replica answers, at its debug line "chose router", until
// release is closed; holding is closed once it holds it.
type holdChoice struct {
	slog.Handler
	once             *sync.Once
	holding, release chan struct{}
}

func (h *holdChoice) Enabled(context.Context, slog.Level) bool { return true }

func (h *holdChoice) Handle(ctx context.Context, rec slog.Record) error {
	if rec.Level < slog.LevelInfo {
		if rec.Message == "chose router" {
			h.once.Do(func() { close(h.holding); <-h.release })
		}
		return nil
	}
	return h.Handler.Handle(ctx, rec)
}

func (h *holdChoice) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &holdChoice{Handler: h.Handler.WithAttrs(attrs), once: h.once, holding: h.holding, release: h.release}
}

func (h *holdChoice) WithGroup(name string) slog.Handler {
	return &holdChoice{Handler: h.Handler.WithGroup(name), once: h.once, holding: h.holding, release: h.release}
}
