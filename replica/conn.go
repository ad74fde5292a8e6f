package replica

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/kv"
)

// natsOptions are the connection's options: authentication and TLS, and a
// connection that never gives up on the gateway's bus.
func (r *Replica) natsOptions() ([]nats.Option, error) {
	auth, err := r.cfg.NATS.Options()
	if err != nil {
		return nil, err
	}
	log := r.log
	return append(auth,
		nats.Name("gecholog-broker "+r.cfg.ID),
		nats.MaxReconnects(-1),                   // as the original: never give up on the gateway's bus
		nats.ReconnectWait(250*time.Millisecond), // plus nats.go's jitter, so replicas do not come back in step
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("disconnected from NATS; reconnecting", slog.Any("error", err))
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("reconnected to NATS", slog.String("server", natsconn.Redact(nc.ConnectedUrl())))
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			attrs := []any{slog.Any("error", err)}
			if sub != nil {
				attrs = append(attrs, slog.String("subject", sub.Subject))
				if dropped, derr := sub.Dropped(); derr == nil && dropped > 0 {
					attrs = append(attrs, slog.Int("dropped_calls", dropped))
				}
			}
			log.Error("NATS error", attrs...)
		}),
	), nil
}

// connect dials the servers until they answer, or returns nil when ctx
// ends first. Failures are logged when they start and then every half
// minute, not every second, and never with a credential in them.
func connect(ctx context.Context, s natsconn.Settings, opts []nats.Option, log *slog.Logger) *nats.Conn {
	for attempt := 0; ; attempt++ {
		nc, err := nats.Connect(s.Servers, opts...)
		if err == nil {
			return nc
		}
		if attempt%30 == 0 {
			log.Warn("cannot connect to NATS; retrying every second", slog.String("server", s.Redacted()),
				slog.Any("error", s.Scrub(err)), slog.String("hint", natsconn.Hint(err)))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

// storeConfig is how every replica opens the bucket.
func storeConfig(c Config, log *slog.Logger) kv.Config {
	return kv.Config{Bucket: c.Bucket, Description: BucketDescription, Replicas: c.KVReplicas,
		Owner: c.ID, Logger: log, Linger: c.Policy.ProbeTimeout}
}

// openStore opens the bucket, retrying until ctx ends. A server without
// JetStream gives kv.ErrNoJetStream at once.
func openStore(ctx context.Context, nc *nats.Conn, c Config, log *slog.Logger) (*kv.Store, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		store, err := kv.Open(actx, js, storeConfig(c, log))
		cancel()
		if err == nil || errors.Is(err, kv.ErrNoJetStream) {
			return store, err
		}
		if attempt%30 == 0 {
			log.Warn("cannot open the router health bucket; retrying", slog.String("bucket", c.Bucket), slog.Any("error", err))
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// reattach keeps trying to open the bucket for a replica that started in
// local mode, and switches the replica to it once JetStream is there,
// carrying the disables it holds over. The function it returns stops it
// and waits for it.
func (r *Replica) reattach(ctx context.Context) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		js, err := jetstream.New(r.nc)
		if err != nil {
			r.log.Error("cannot look for JetStream; staying in local mode", slog.Any("error", err))
			return
		}
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(r.cfg.Reattach):
			}
			actx, cancelOpen := context.WithTimeout(ctx, 5*time.Second)
			store, err := kv.Open(actx, js, storeConfig(r.cfg, r.log))
			cancelOpen()
			if err != nil {
				continue // still no JetStream, or the server is away: try again later
			}
			r.mu.Lock()
			if r.store != nil {
				r.store.Close() // an earlier attempt whose watch failed
			}
			r.store = store // closed when the replica stops
			r.mu.Unlock()
			r.broker.Attach(store)
			resyncOnReconnect(r.nc, store, r.log)
			stopWatch, err := store.Watch(ctx, r.broker.Observe)
			if err != nil {
				continue // writes go to the bucket already; the next attempt watches
			}
			r.mu.Lock()
			r.stopWatch, r.mode = stopWatch, store.Mode().String()
			r.mu.Unlock()
			r.mon.attached(store.Mode().String())
			r.mon.stage("")
			r.log.Info("JetStream is available: router health is now shared through the bucket, local disables carried over",
				slog.String("bucket", r.cfg.Bucket), slog.String("ttl_mode", store.Mode().String()))
			return
		}
	}()
	return func() { cancel(); <-done }
}

// resyncOnReconnect reloads the view from the bucket after every reconnect,
// instead of waiting for the watcher to miss its heartbeats.
func resyncOnReconnect(nc *nats.Conn, store *kv.Store, log *slog.Logger) {
	nc.SetReconnectHandler(func(nc *nats.Conn) {
		log.Info("reconnected to NATS", slog.String("server", natsconn.Redact(nc.ConnectedUrl())), slog.Bool("reloading_router_health", true))
		store.Resync()
	})
}
