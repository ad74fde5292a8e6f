package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/kv"
	"github.com/gecholog/broker/replica"
)

// startServer starts an embedded nats-server unless -server names one,
// and learns the server's version. The function it returns shuts the
// embedded server down and removes its files, or deletes the bench's
// buckets from the given server.
func (b *bench) startServer() (stop func(), err error) {
	stop = b.deleteBucket
	if b.o.server == "" {
		store, err := os.MkdirTemp("", "broker-bench-")
		if err != nil {
			return nil, err
		}
		srv, err := replica.StartEmbedded(replica.Embedded{Listen: "127.0.0.1:0", StoreDir: store}, b.o.token,
			slog.New(slog.DiscardHandler))
		if err != nil {
			os.RemoveAll(store)
			return nil, err
		}
		stop = func() {
			srv.Shutdown()
			srv.WaitForShutdown()
			os.RemoveAll(store)
		}
		b.url, b.version, b.where = srv.ClientURL(), server.VERSION, "embedded, "+srv.Addr().String()
		b.srv = srv
	} else {
		b.url, b.where = b.o.server, natsconn.Redact(b.o.server)
	}
	nc, err := b.connect()
	if err != nil {
		if b.o.server == "" {
			stop()
		}
		return nil, err
	}
	if b.version == "" {
		b.version = nc.ConnectedServerVersion()
	}
	nc.Close()
	return stop, nil
}

func (b *bench) connect() (*nats.Conn, error) {
	opts := []nats.Option{nats.Name("broker bench"), nats.MaxReconnects(-1)}
	if b.o.token != "" {
		opts = append(opts, nats.Token(b.o.token))
	}
	nc, err := nats.Connect(b.url, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", natsconn.Redact(b.url), err)
	}
	return nc, nil
}

// connectN opens n connections, closed by the function it returns.
func (b *bench) connectN(n int) ([]*nats.Conn, func(), error) {
	var conns []*nats.Conn
	closeAll := func() {
		for _, nc := range conns {
			nc.Close()
		}
	}
	for range n {
		nc, err := b.connect()
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		conns = append(conns, nc)
	}
	return conns, closeAll, nil
}

func (b *bench) deleteBucket() {
	nc, err := b.connect()
	if err != nil {
		return
	}
	defer nc.Close()
	if js, err := jetstream.New(nc); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = js.DeleteKeyValue(ctx, b.bucket)
		_ = js.DeleteKeyValue(ctx, kv.ConfigBucket(b.bucket)) // reconfig's
	}
}

// replicaLog is a replica's log: stderr at -log-level.
func (b *bench) replicaLog(id string) *slog.Logger {
	return slog.New(slog.NewTextHandler(b.stderr, &slog.HandlerOptions{Level: b.o.level})).
		With(slog.String("replica", id))
}

// startFleet runs n replicas on pools, on the bench's subject and bucket,
// and returns once every one answers calls.
func (b *bench) startFleet(ctx context.Context, n int, pools []broker.Pool, disabled time.Duration, log func(id string) *slog.Logger) (*replica.Fleet, error) {
	f, err := replica.StartFleet(ctx, replica.Config{
		NATS:    natsconn.Settings{Servers: b.url, Token: b.o.token},
		Subject: b.subject,
		Bucket:  b.bucket,
		Pools:   pools,
		Policy:  broker.Policy{DisabledTime: disabled},
	}, n, log)
	if err != nil && ctx.Err() != nil {
		return nil, ctx.Err() // interrupted, not failed
	}
	return f, err
}

// kvWrites is the bucket writes the fleet's replicas have attempted.
func kvWrites(f *replica.Fleet) uint64 {
	var n uint64
	for _, r := range f.Replicas {
		n += r.Broker().Stats().KVWrites
	}
	return n
}

// startNoop runs n responders that answer every call empty at once: the
// floor the broker is measured against. Each has its own connection and
// queue subscription, as each replica has.
func (b *bench) startNoop(n int) (func(), error) {
	conns, closeAll, err := b.connectN(n)
	if err != nil {
		return nil, err
	}
	for _, nc := range conns {
		if _, err := nc.QueueSubscribe(b.noop, "noop", func(m *nats.Msg) { _ = m.Respond(nil) }); err != nil {
			closeAll()
			return nil, err
		}
		if err := nc.Flush(); err != nil {
			closeAll()
			return nil, err
		}
	}
	return closeAll, nil
}

// benchPools is n routers in pools of about n/pools: /p0/ over /p0/r0/,
// /p0/r1/, ...
func benchPools(pools, routers int) []broker.Pool {
	ps := make([]broker.Pool, pools)
	for i := range ps {
		ps[i].Ingress = fmt.Sprintf("/p%d/", i)
	}
	for j := range routers {
		p := &ps[j%pools]
		p.Routers = append(p.Routers, broker.Router{Path: fmt.Sprintf("%sr%d/", p.Ingress, len(p.Routers)), Weight: 1})
	}
	return ps
}
