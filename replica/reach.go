package replica

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/kv"
)

// link is the connection's state as its handlers last told it, for the
// endpoints to read: nats.Conn's own accessors take the connection's
// lock, which its flusher holds while a write to a stalled server blocks,
// and /metrics, /readyz and the page must answer whatever the bus does.
type link struct {
	up     atomic.Bool
	server atomic.Pointer[string] // redacted; "" while down
	// moveTo is the server (scheme://host, as nats.Conn.Servers says)
	// the next reconnection goes to: the one moveIfAnswered found the
	// bucket answering through. nats.go would otherwise try whichever
	// other server its pool holds next, a cut-off one as well.
	moveTo atomic.Pointer[string]
}

// next is nats.go's ReconnectToServer callback: the server moveTo names,
// once, or nil (nats.go's own choice) when it names none or one no longer
// in the pool. nats.go calls it holding the connection's lock.
func (l *link) next(pool []nats.Server, _ nats.ServerInfo) (*nats.Server, time.Duration) {
	to := l.moveTo.Swap(nil)
	if to == nil {
		return nil, 0
	}
	for i := range pool {
		if u := pool[i].URL; u != nil && u.Scheme+"://"+u.Host == *to {
			return &pool[i], 0
		}
	}
	return nil, 0
}

// set records nc as connected. Call it from the connection's handlers or
// right after connecting, never from an endpoint.
func (l *link) set(nc *nats.Conn) {
	if l == nil {
		return
	}
	url := natsconn.Redact(nc.ConnectedUrl())
	l.server.Store(&url)
	l.up.Store(url != "")
}

// down records the connection as lost.
func (l *link) down() {
	if l != nil {
		l.up.Store(false)
	}
}

// state is whether the connection is up and to which server.
func (l *link) state() (up bool, server string) {
	if l == nil {
		return false, ""
	}
	if s := l.server.Load(); s != nil {
		server = *s
	}
	return l.up.Load(), server
}

// Seeing the bucket. A replica cut off from the bucket (a partition, a
// leaderless stream, JetStream down) still answers calls, with what it
// knows plus the failures it sees itself, but it says so: /readyz,
// broker_bucket_reachable, the log, the page and `broker status`.
const (
	// staleAfter is how long the bucket may go without answering before
	// the replica says it may be stale: the watcher asks twice a second,
	// and one answer a second late is not yet a partition.
	staleAfter = 2 * time.Second
	// staleRepeat is how often a replica still cut off says so again.
	staleRepeat = time.Minute
	// reachCheck is how often the replica reads the store's Reach.
	reachCheck = 250 * time.Millisecond
	// moveAfter is how long a connected replica waits, its bucket not
	// answering, before it looks for a server through which it does: as
	// soon as it says it may be stale, for it moves only to a server
	// through which the bucket answers with its quorum.
	moveAfter = staleAfter
	// probeEvery is how often a replica that may move asks the other
	// servers again: while the rest of a cluster elects the bucket's
	// leader, none answers yet.
	probeEvery = time.Second
	// hereWait bounds asking the replica's own server once more before it
	// moves: a server of a cluster that has just elected the bucket's
	// leader answers within milliseconds, and a stalled one never does,
	// which then delays the move by as long.
	hereWait = 500 * time.Millisecond
)

// bucketState is what the replica last found of the bucket.
type bucketState struct {
	Stale      bool
	LastAnswer time.Time // when the bucket last answered
	Cause      string
}

// String is what /readyz and the page say of a stale bucket.
func (b bucketState) String() string {
	return fmt.Sprintf("bucket unreachable for %s: %s", time.Since(b.LastAnswer).Round(100*time.Millisecond), b.Cause)
}

// staleness says why the replica's view may be stale, for the others and
// `broker status`; "" when the bucket answers. Its duration is whole
// seconds, so that the word changes once a second, not at every tell.
func (r *Replica) staleness() string {
	b := r.bucket.Load()
	if b == nil || !b.Stale {
		return ""
	}
	return fmt.Sprintf("bucket unreachable for %s: %s", time.Since(b.LastAnswer).Truncate(time.Second), b.Cause)
}

// lookAtBucket says what the store last found of the bucket; a nil store
// (local mode) finds nothing.
func (r *Replica) lookAtBucket() (*kv.Store, kv.Reach, bucketState, time.Time) {
	r.mu.Lock()
	store := r.store
	r.mu.Unlock()
	now := time.Now()
	if store == nil {
		return nil, kv.Reach{}, bucketState{}, now
	}
	rc := store.Reach()
	lost := rc.Cause != "" && !rc.LastAnswer.IsZero() && now.Sub(rc.LastAnswer) >= staleAfter
	return store, rc, bucketState{Stale: lost, LastAnswer: rc.LastAnswer, Cause: rc.Cause}, now
}

// showBucket records st for the endpoints and the others.
func (r *Replica) showBucket(st bucketState) {
	r.bucket.Store(&st)
	r.mon.bucketSeen(st)
}

// keepReach follows whether the bucket answers until ctx ends: it tells
// the monitor, logs when the bucket is lost, once a minute while it is,
// and when it is back, and then reads every router's health at once
// rather than waiting for the watcher. A replica whose server is up but
// whose bucket does not answer through it moves to a server through which
// it does, when there is one.
func (r *Replica) keepReach(ctx context.Context) {
	tick := time.NewTicker(reachCheck)
	defer tick.Stop()
	var (
		stale    bool
		told     time.Time // when the loss was last logged
		lastMove time.Time
	)
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		store, rc, st, now := r.lookAtBucket()
		if store == nil {
			continue // local mode: nothing to reach
		}
		// A change is logged before /readyz and the page show it, so that
		// whoever sees it there finds the line that says why.
		lost, back := st.Stale, false
		switch {
		case lost && !stale:
			stale, told = true, now
			r.log.Warn("the router health bucket does not answer: serving with what this replica knows and the failures it sees itself, which it writes once the bucket answers",
				slog.String("bucket", r.cfg.Bucket), slog.String("cause", rc.Cause), slog.Time("last_answer", rc.LastAnswer),
				slog.String("hint", "see the README's cluster section: a server cut off from its cluster, or a cluster electing a leader"))
		case lost && now.Sub(told) >= staleRepeat:
			told = now
			r.log.Warn("the router health bucket still does not answer", slog.String("bucket", r.cfg.Bucket),
				slog.String("cause", rc.Cause), slog.Duration("for", now.Sub(rc.LastAnswer).Round(time.Second)))
		case !lost && stale:
			stale = false
			// A warning as the loss was, so that a filter on warnings shows
			// both ends of the time the view may have been stale.
			r.log.Warn("the router health bucket answers again; reading every router's health",
				slog.String("bucket", r.cfg.Bucket), slog.Duration("after", now.Sub(told).Round(time.Millisecond)))
			back = true
		}
		r.showBucket(st)
		if back {
			store.Resync()
			r.broker.RetryWrites()
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			if err := r.broker.Reload(rctx); err != nil && ctx.Err() == nil {
				r.log.Warn("could not read every router's health; the watcher brings it", slog.Any("error", err))
			}
			cancel()
		}
		if lost && now.Sub(rc.LastAnswer) >= moveAfter && now.Sub(lastMove) >= probeEvery {
			if up, _ := r.link.state(); up {
				lastMove = now
				r.moveIfAnswered(ctx, rc.Cause)
			}
		}
	}
}

// moveIfAnswered asks each other server the connection knows of (those it
// was given and those it learned from the cluster) whether the bucket
// answers through it, over a connection of its own, and on the first that
// says yes has the connection reconnect there (see link.moveTo). While a
// cluster elects the bucket's leader, a replica on a node of the majority
// finds it answering through another node a moment before its own watcher
// does: it asks its own server once more, and stays when the bucket
// answers there too, for a move costs the calls in flight.
func (r *Replica) moveIfAnswered(ctx context.Context, cause string) {
	_, from := r.link.state()
	auth, err := r.cfg.NATS.Options()
	if err != nil {
		return
	}
	for _, url := range r.nc.Servers() {
		if natsconn.Redact(url) == from {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		err := probeServer(pctx, url, r.cfg.Bucket, auth)
		cancel()
		if err != nil {
			continue
		}
		if r.answersHere(ctx) {
			return
		}
		r.log.Warn("moving to another NATS server: the router health bucket answers through it, not through this one",
			slog.String("from", from), slog.String("to", natsconn.Redact(url)), slog.String("cause", cause))
		r.link.moveTo.Store(&url)
		if err := r.nc.ForceReconnect(); err != nil {
			r.link.moveTo.Store(nil)
			r.log.Warn("could not move to another NATS server", slog.Any("error", err))
		}
		return
	}
}

// answersHere is whether the bucket answers through the replica's own
// server, as a server to move to must, within hereWait.
func (r *Replica) answersHere(ctx context.Context) bool {
	js, err := jetstream.New(r.nc)
	if err != nil {
		return false
	}
	pctx, cancel := context.WithTimeout(ctx, hereWait)
	defer cancel()
	return kv.ProbeToMove(pctx, js, r.cfg.Bucket) == nil
}

// probeServer connects to url alone and asks whether bucket answers with
// a leader and its quorum through it.
func probeServer(ctx context.Context, url, bucket string, auth []nats.Option) error {
	opts := append(auth[:len(auth):len(auth)], nats.Name("gecholog-broker probe"), nats.Timeout(time.Second), nats.NoReconnect())
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	return kv.ProbeToMove(ctx, js, bucket)
}
