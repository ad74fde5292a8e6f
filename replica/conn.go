package replica

import (
	"context"
	"errors"
	"log/slog"
	"sync"
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
				log.Warn("disconnected from NATS; reconnecting", slog.Any("error", r.cfg.NATS.Scrub(err)))
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("reconnected to NATS", slog.String("server", natsconn.Redact(nc.ConnectedUrl())))
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if sub != nil && errors.Is(err, nats.ErrSlowConsumer) {
				if sub.Queue == "" && sub.Subject == r.cfg.LoggerSubject {
					r.tx.tellDropped(log, sub, false) // statistics, not calls
					return
				}
				r.drops.tell(log, sub, false)
				return
			}
			attrs := []any{slog.Any("error", r.cfg.NATS.Scrub(err))}
			if sub != nil {
				attrs = append(attrs, slog.String("subject", sub.Subject))
			}
			log.Error("NATS error", attrs...)
		}),
	), nil
}

// dropEvery is how often, at most, a subscription that keeps dropping
// messages is logged.
const dropEvery = 10 * time.Second

// drops logs the messages a subscription dropped because its queue was
// full: one line when it starts, then at most one every dropEvery with the
// count since the last, and the rest when the replica stops. nats.go
// reports a slow consumer each time the queue, having taken a message,
// drops the next, which under a long burst is every few milliseconds.
type drops struct {
	mu   sync.Mutex
	told map[*nats.Subscription]dropsTold
}

type dropsTold struct {
	at    time.Time
	count int // dropped as of the last line
}

// tell logs sub's drops unless a line went out within dropEvery; final
// logs any untold drops whatever the time.
func (d *drops) tell(log *slog.Logger, sub *nats.Subscription, final bool) {
	dropped, err := sub.Dropped()
	if err != nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	last := d.told[sub]
	if dropped <= last.count || !final && time.Since(last.at) < dropEvery {
		return
	}
	if d.told == nil {
		d.told = map[*nats.Subscription]dropsTold{}
	}
	d.told[sub] = dropsTold{at: time.Now(), count: dropped}
	log.Error("NATS error", slog.Any("error", nats.ErrSlowConsumer), slog.String("subject", sub.Subject),
		slog.Int("dropped_calls", dropped-last.count), slog.Int("dropped_calls_total", dropped),
		slog.String("hint", "calls arrive faster than this replica answers them; run more replicas"))
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
	return kv.Config{Bucket: c.Bucket, Description: BucketDescription, Replicas: c.KVReplicas, News: NewsSubject(c.Bucket),
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
			attrs := []any{slog.String("bucket", c.Bucket), slog.Any("error", err)}
			if perr := nc.LastError(); errors.Is(perr, nats.ErrPermissionViolation) {
				// The server refuses JetStream API requests without an
				// answer; the request only times out.
				attrs = append(attrs, slog.String("hint", "the server refused a request: "+perr.Error()+
					"; grant the broker's NATS user the permissions in docs/security.md (Least privilege), or create the bucket beforehand"))
			}
			log.Warn("cannot open the router health bucket; retrying", attrs...)
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
			r.resyncOnReconnect(store)
			stopWatch, err := store.Watch(ctx, r.broker.Observe, kv.WithVerify(r.broker.Verify))
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

// reloadAgain is when a replica reads every router's health a second time
// after reconnecting.
const reloadAgain = 500 * time.Millisecond

// resyncOnReconnect brings the view up to date after every reconnect,
// instead of waiting for the watcher to miss its heartbeats: it reads every
// router's key at once (which works while a cluster elects a leader, when
// a new watcher cannot be made), asks the other replicas for disables
// they announced while this one was away, and watches again.
func (r *Replica) resyncOnReconnect(store *kv.Store) {
	r.nc.SetReconnectHandler(func(nc *nats.Conn) {
		r.log.Info("reconnected to NATS", slog.String("server", natsconn.Redact(nc.ConnectedUrl())), slog.Bool("reloading_router_health", true))
		store.Resync()
		r.background(func(ctx context.Context) {
			ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			// Twice: at once, and again once this replica's interest in the
			// news has reached every node of a cluster. A disable announced
			// and written while it was spreading was neither heard nor yet
			// in the bucket at the first reading, and the watcher may not be
			// back before the cluster has elected a leader.
			var err error
			for _, after := range []time.Duration{0, reloadAgain} {
				select {
				case <-ctx.Done():
					return
				case <-time.After(after):
				}
				err = r.broker.Reload(ctx)
			}
			if err != nil && ctx.Err() == nil {
				r.log.Warn("could not read every router's health after reconnecting; the watcher brings it", slog.Any("error", err))
			}
		})
	})
}

// background runs f in a goroutine that stopping the replica cancels and
// waits for. Once the replica stops, it runs nothing.
func (r *Replica) background(f func(ctx context.Context)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.bgCtx.Err() != nil {
		return
	}
	r.bg.Add(1)
	go func() {
		defer r.bg.Done()
		f(r.bgCtx)
	}()
}
