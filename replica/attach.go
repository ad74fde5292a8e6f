package replica

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/kv"
)

// openTimeout bounds one attempt to open the bucket.
const openTimeout = 5 * time.Second

// storeConfig is how every replica opens the bucket.
func storeConfig(c Config, log *slog.Logger) kv.Config {
	return kv.Config{Bucket: c.Bucket, Description: BucketDescription, Replicas: c.KVReplicas, News: NewsSubject(c.Bucket),
		Owner: c.ID, Logger: log, Linger: c.Policy.ProbeTimeout}
}

// attach opens the bucket and shares router health through it: the
// broker writes there from now on (carrying the disables it holds over),
// a reconnect reads every router's health again, and the view is loaded
// whole and then watched until the replica stops. Both the start and a
// replica that started in local mode (reattach) attach through it. With
// retry it keeps opening the bucket until ctx ends; without, it tries
// once. A server without JetStream gives kv.ErrNoJetStream at once.
func (r *Replica) attach(ctx context.Context, retry bool) error {
	store, err := r.openStore(ctx, retry)
	if err != nil {
		return err
	}
	r.mu.Lock()
	earlier := r.store
	r.store = store // closed when the replica stops
	r.mu.Unlock()
	if earlier != nil {
		earlier.Close() // an earlier attempt whose watch failed
	}
	r.stage.advance(loadingView)
	r.broker.Attach(store)
	r.resyncOnReconnect(store)
	stopWatch, err := store.Watch(ctx, r.broker.Observe, kv.WithVerify(r.broker.Verify))
	if err != nil {
		return fmt.Errorf("load router health from bucket %q: %w", r.cfg.Bucket, err)
	}
	if !r.spawn(func(ctx context.Context) { <-ctx.Done(); stopWatch() }) {
		stopWatch() // the replica is stopping already
	}
	r.setMode(store.Mode().String())
	return nil
}

// openStore opens the bucket: with retry every second until ctx ends,
// saying why now and then, or else once.
func (r *Replica) openStore(ctx context.Context, retry bool) (*kv.Store, error) {
	js, err := jetstream.New(r.nc)
	if err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, openTimeout)
		store, err := kv.Open(actx, js, storeConfig(r.cfg, r.log))
		cancel()
		if err == nil || errors.Is(err, kv.ErrNoJetStream) || !retry {
			return store, err
		}
		if attempt%30 == 0 {
			attrs := []any{slog.String("bucket", r.cfg.Bucket), slog.Any("error", err)}
			if perr := r.nc.LastError(); errors.Is(perr, nats.ErrPermissionViolation) {
				// The server refuses JetStream API requests without an
				// answer; the request only times out.
				attrs = append(attrs, slog.String("hint", "the server refused a request: "+perr.Error()+
					"; grant the broker's NATS user the permissions in docs/security.md (Least privilege), or create the bucket beforehand"))
			}
			r.log.Warn("cannot open the router health bucket; retrying", attrs...)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// reattach looks for JetStream every Reattach, for a replica that started
// in local mode, until it attaches to the bucket or ctx ends.
func (r *Replica) reattach(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(r.cfg.Reattach):
		}
		// Still no JetStream, the server away, or the watch failed (the
		// writes go to the bucket already): the next attempt tries again.
		if r.attach(ctx, false) == nil {
			r.log.Info("JetStream is available: router health is now shared through the bucket, local disables carried over",
				slog.String("bucket", r.cfg.Bucket), slog.String("ttl_mode", r.Mode()))
			return
		}
	}
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
		r.link.set(nc)
		r.log.Info("reconnected to NATS", slog.String("server", natsconn.Redact(nc.ConnectedUrl())), slog.Bool("reloading_router_health", true))
		store.Resync()
		r.spawn(func(ctx context.Context) {
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
