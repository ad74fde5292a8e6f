package kv_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/matryer/is"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/kv"
)

// A watcher's ordered consumer does not survive a server restart; Resync
// on reconnect starts a new one at once, instead of after two missed
// heartbeats (about ten seconds).
func TestResyncOnReconnectResumesTheWatcherAfterAServerRestart(t *testing.T) {
	is := is.New(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	is.NoErr(err)
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	dir := t.TempDir()
	opt := func(o *server.Options) { o.Port = port; o.StoreDir = dir }
	s1 := natstest.Start(t, opt)
	nc, err := nats.Connect(s1.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	is.NoErr(err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	is.NoErr(err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := kv.Open(ctx, js, kv.Config{Bucket: "health"})
	is.NoErr(err)
	t.Cleanup(st.Close)
	var ev events
	stop := watch(t, ctx, st, ev.add)
	nc.SetReconnectHandler(func(*nats.Conn) { st.Resync() })
	s1.Shutdown()
	s1.WaitForShutdown()
	s2 := natstest.Start(t, opt)
	// Stop the watcher before s2 shuts down: nats.go deletes a watcher's
	// consumer when it stops, and against a server that is gone that call
	// waits out the JetStream API timeout (5 s).
	t.Cleanup(stop)
	start := time.Now()
	js2 := natstest.JetStream(t, s2)
	b, err := js2.KeyValue(ctx, "health")
	is.NoErr(err)
	_, err = b.Put(ctx, "/a/", encode(t, record("/a/", time.Now().Add(time.Hour))))
	is.NoErr(err)
	natstest.Eventually(t, 2*time.Second, func() bool { e, ok := ev.last("/a/"); return ok && e.Entry != nil }, "watcher hears the put")
	t.Logf("heard %v after the server was back", time.Since(start))
}
