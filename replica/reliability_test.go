package replica_test

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matryer/is"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/natstest"
	"github.com/gecholog/broker/kv"
	"github.com/gecholog/broker/replica"
)

// serveOne runs one replica on url with a short re-attach interval. The
// caller defers stop, so the replica stops before the servers do.
func serveOne(t *testing.T, url string, logs io.Writer) (b *broker.Broker, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	stop = func() { cancel(); wg.Wait() }
	ready := make(chan *broker.Broker, 1)
	c := replica.Config{
		NATS: natsconn.Settings{Servers: url}, Policy: broker.Policy{DisabledTime: time.Minute}, ID: "replica-1",
		Reattach: 100 * time.Millisecond, Logger: slog.New(slog.NewJSONHandler(logs, nil)),
		Ready: func(r *replica.Replica) { ready <- r.Broker() },
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := replica.Run(ctx, c); err != nil {
			t.Errorf("replica.Run: %v", err)
		}
	}()
	select {
	case b = <-ready:
		return b, stop
	case <-time.After(10 * time.Second):
		stop()
		t.Fatal("replica not ready within 10s")
		return nil, nil
	}
}

func TestLocalModeSwitchesToTheBucketWhenJetStreamAppearsAndCarriesDisablesOver(t *testing.T) {
	is := is.New(t)
	port := freePort(t)
	stock := natstest.Start(t, natstest.WithoutJetStream(), onPort(port)) // gecholog's stock config
	var logs syncBuffer
	b, stop := serveOne(t, stock.ClientURL(), &logs)
	defer stop()
	serving, _ := logLine(logs.String(), "serving")
	is.Equal(serving["ttl_mode"], "local")

	nc := natstest.Connect(t, stock, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	_, err := nc.Request("coburn.gl.broker", []byte(`{"gl_path":"/azure/dud/","egress_status_code":502}`), 2*time.Second)
	is.NoErr(err)
	is.Equal(b.Phase("/azure/dud/"), broker.Disabled) // disabled in this replica alone

	// The operator enables JetStream and restarts the server.
	stock.Shutdown()
	stock.WaitForShutdown()
	js := natstest.Start(t, onPort(port))
	natstest.Eventually(t, 15*time.Second, func() bool {
		_, ok := logLine(logs.String(), "JetStream is available: router health is now shared through the bucket, local disables carried over")
		return ok
	}, "the replica attaches to the bucket")

	bucket, err := natstest.JetStream(t, js).KeyValue(context.Background(), "gl_broker")
	is.NoErr(err)
	e, err := bucket.Get(context.Background(), "/azure/dud/")
	is.NoErr(err) // the local disable was carried over
	r, err := kv.Decode("/azure/dud/", e.Value())
	is.NoErr(err)
	is.Equal(r.By, "replica-1")
	is.Equal(b.Phase("/azure/dud/"), broker.Disabled)

	// From now on disables are shared.
	natstest.Eventually(t, 5*time.Second, func() bool {
		_, err := nc.Request("coburn.gl.broker", []byte(`{"gl_path":"/azure/gpt4/","egress_status_code":503}`), time.Second)
		return err == nil
	}, "the client reconnects")
	natstest.Eventually(t, 5*time.Second, func() bool {
		_, err := bucket.Get(context.Background(), "/azure/gpt4/")
		return err == nil
	}, "a new disable is written to the bucket")
}

func TestRequireKVRefusesToStartWithoutJetStream(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t, natstest.WithoutJetStream())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := replica.Run(ctx, replica.Config{NATS: natsconn.Settings{Servers: s.ClientURL()}, RequireKV: true})
	is.True(err != nil)                                   // refused
	is.True(strings.Contains(err.Error(), "require-kv"))  // names the setting
	is.True(strings.Contains(err.Error(), "jetstream {")) // and the fix
	is.True(!strings.Contains(err.Error(), "\n"))
}

func TestBucketDeletedAtRuntimeIsRecreatedAndServingNeverStops(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	var logs syncBuffer
	b, stop := serveOne(t, s.ClientURL(), &logs)
	defer stop()
	nc := natstest.Connect(t, s)
	js, err := jetstream.New(nc)
	is.NoErr(err)
	is.NoErr(js.DeleteKeyValue(context.Background(), "gl_broker"))

	natstest.Eventually(t, 20*time.Second, func() bool {
		_, err := js.KeyValue(context.Background(), "gl_broker")
		return err == nil
	}, "the bucket is back")
	natstest.Eventually(t, 5*time.Second, func() bool {
		return strings.Contains(logs.String(), "bucket was deleted; created it again")
	}, "the replica says so")
	m, err := nc.Request("coburn.gl.broker", []byte(`{"gl_path":"/azure/"}`), time.Second)
	is.NoErr(err)
	is.True(strings.HasPrefix(string(m.Data), `{"gl_path":"/azure/`)) // still serving
	_, err = nc.Request("coburn.gl.broker", []byte(`{"gl_path":"/azure/dud/","egress_status_code":502}`), time.Second)
	is.NoErr(err)
	bucket, err := js.KeyValue(context.Background(), "gl_broker")
	is.NoErr(err)
	natstest.Eventually(t, 10*time.Second, func() bool {
		_, err := bucket.Get(context.Background(), "/azure/dud/")
		return err == nil
	}, "disables are shared through the new bucket")
	is.Equal(b.Phase("/azure/dud/"), broker.Disabled)
	is.Equal(strings.Count(logs.String(), "bucket was deleted; created it again"), 1) // logged once
}

func TestARefusedSubscriptionStopsStartupWithOneLine(t *testing.T) {
	is := is.New(t)
	// A user that may use JetStream and inboxes, but not the broker's subject.
	s := natstest.Start(t, func(o *server.Options) {
		o.Users = []*server.User{{Username: "broker", Password: "pw", Permissions: &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: []string{">"}},
			Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>"}},
		}}}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := replica.Run(ctx, replica.Config{NATS: natsconn.Settings{Servers: s.ClientURL(), User: "broker", Password: "pw"}})
	is.True(err != nil) // no replica that never gets a call
	is.True(strings.Contains(err.Error(), `allow the broker's NATS user to subscribe to "coburn.gl.broker broker"`))
	is.True(!strings.Contains(err.Error(), "\n"))
}
