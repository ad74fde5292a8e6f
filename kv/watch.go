package kv

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/broker"
)

// Watch calls fn once for every key in the bucket and returns when it has,
// so the caller's view is complete before it serves. Then it keeps calling
// fn for each change until ctx ends or stop is called; stop returns when
// nothing calls fn any more. fn may be called from three goroutines at
// once: the watcher's, the news' announcements (see Store.Announce), and
// the reader of the keys the news told of; Event.Revision tells which
// word is newer. If the watcher stops meanwhile (the connection was
// closed, the consumer vanished), Watch starts a new one and reports keys
// that disappeared as deleted (an Event with neither Entry nor Memo). A
// delete marker's memo (see Store.Release) arrives as the Event's Memo.
//
// Twice a second Watch compares the bucket's stream with what it has
// delivered. A stream made again (the bucket was deleted: its creation
// time changed) is told as an Event with Reset, and read afresh; a purge
// (a delivered key's message is gone) is read afresh; and after the stream
// changed, WithVerify's function compares the caller's view with it.
//
// Each attempt to start a watcher is bounded by watchAttempt and retried
// until ctx ends: during a cluster's election of a JetStream meta leader no
// consumer can be made, and the news carries the replicas' changes
// meanwhile.
func (s *Store) Watch(ctx context.Context, fn func(broker.Event), opts ...WatchOption) (stop func(), err error) {
	var o watchOptions
	for _, opt := range opts {
		opt(&o)
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	h := newHints()
	wg.Go(func() { s.readHints(ctx, h, fn) })
	// Listening first, so that no news falls between the load and the
	// listening.
	unlisten, err := s.listen(fn, h)
	if err != nil {
		cancel()
		wg.Wait()
		return nil, fmt.Errorf("listen to the news of bucket %q: %w", s.Bucket(), err)
	}
	known := map[string]uint64{}
	w, err := s.watch(ctx, known, fn)
	for attempt := 1; err != nil && !gone(err) && !errors.Is(err, ErrNoJetStream) && ctx.Err() == nil; attempt++ {
		if attempt == 1 {
			s.log.Warn("cannot load the bucket yet; retrying until it works",
				slog.String("bucket", s.Bucket()), slog.Any("error", err))
		}
		select {
		case <-ctx.Done():
		case <-time.After(retryWatch):
			w, err = s.watch(ctx, known, fn)
		}
	}
	if err == nil && ctx.Err() != nil {
		_ = w.Stop() // its context outlives ctx (see watch)
		err = ctx.Err()
	}
	if err != nil {
		cancel()
		wg.Wait()
		unlisten()
		return nil, err
	}
	wg.Go(func() { s.keepWatching(ctx, w, known, fn, o.verify) })
	wg.Go(func() { s.retell(ctx) })
	return func() { cancel(); wg.Wait(); unlisten() }, nil
}

// A WatchOption tunes Watch.
type WatchOption func(*watchOptions)

type watchOptions struct {
	verify func(ctx context.Context, upTo uint64) error
}

// WithVerify has Watch call verify from its goroutine after the bucket's
// stream changed and the watcher delivered the change, at most twice a
// second, and every fullVerify whatever happened (see
// broker.Broker.Verify); upTo is the last revision the watcher delivered.
// Each call is bounded to half a second; an error makes Watch call it
// again at the next check.
func WithVerify(verify func(ctx context.Context, upTo uint64) error) WatchOption {
	return func(o *watchOptions) { o.verify = verify }
}

const (
	// watchAttempt bounds one attempt to start a watcher and load the
	// bucket through it: a few milliseconds when the servers are well,
	// and nothing comes sooner during an election.
	watchAttempt = 2 * time.Second
	// retryWatch is the pause between attempts.
	retryWatch = 250 * time.Millisecond
)

// keepWatching follows w, and each watcher after it, until ctx ends.
func (s *Store) keepWatching(ctx context.Context, w jetstream.KeyWatcher, known map[string]uint64, fn func(broker.Event), verify func(context.Context, uint64) error) {
	var err error
	for {
		asked := s.follow(ctx, w, known, fn, verify)
		if ctx.Err() != nil {
			return
		}
		wait := 100 * time.Millisecond
		if asked {
			wait = 0
		} else {
			s.log.Warn("bucket watcher stopped; watching again", slog.String("bucket", s.Bucket()))
		}
		for failed := false; ; wait = max(min(2*wait, time.Second), retryWatch) {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			if w, err = s.watch(ctx, known, fn); err == nil {
				break
			}
			if ctx.Err() != nil {
				return
			}
			if gone(err) && !s.cfg.NoCreate {
				// Someone deleted the bucket. Replicas keep serving from
				// their views meanwhile; a new bucket starts empty.
				if _, cerr := create(ctx, s.js, s.cfg); cerr == nil {
					s.log.Warn("bucket was deleted; created it again", slog.String("bucket", s.Bucket()))
					wait = 0
					continue
				}
			}
			if !failed {
				s.log.Warn("could not watch bucket; retrying until it works", slog.String("bucket", s.Bucket()), slog.Any("error", err))
				failed = true
			}
		}
	}
}

// gone reports whether err says the bucket's stream does not exist.
func gone(err error) bool {
	return errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) ||
		errors.Is(err, nats.ErrStreamNotFound)
}

// watch starts a watcher and delivers the bucket's current keys to fn. Keys
// in known that are no longer there are delivered as deleted.
func (s *Store) watch(ctx context.Context, known map[string]uint64, fn func(broker.Event)) (jetstream.KeyWatcher, error) {
	// The attempt is cancelled when it takes too long or ctx ends, but a
	// watcher that made it keeps its context: nats.go makes its consumer
	// again with that context after a reconnect, and a cancelled one
	// breaks that. Nor does that context end with ctx, for when it ends
	// nats.go stops the watcher from a goroutine of its own, and a
	// connection closed meanwhile cuts off the deletion of its consumer,
	// which the server then keeps until it has been idle for seconds. The
	// watcher's Stop deletes the consumer, waits, and then ends it.
	actx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	timeout := time.AfterFunc(watchAttempt, cancel)
	unlink := context.AfterFunc(ctx, cancel)
	made := false
	defer func() {
		unlink()
		if !made {
			cancel()
		}
	}()
	if st, err := s.state(actx); err == nil && !st.created.Equal(s.created) {
		// The bucket was deleted and made again since the view was
		// loaded: its revisions started over, and the caller must forget
		// the ones it holds before it hears the new bucket's.
		if !s.created.IsZero() {
			s.log.Warn("the bucket was deleted and made again; reading it afresh",
				slog.String("bucket", s.Bucket()), slog.Time("created", st.created))
			fn(broker.Event{Reset: true})
		}
		s.created, s.delivered, s.staleAt = st.created, 0, 0
	}
	w, err := s.kv.WatchAll(actx)
	if err != nil {
		timeout.Stop()
		return nil, noJetStream(fmt.Errorf("watch bucket %q: %w", s.Bucket(), err))
	}
	seen := map[string]bool{}
	for {
		select {
		case <-actx.Done():
			_ = w.Stop()
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("watch bucket %q: no answer while loading within %v", s.Bucket(), watchAttempt)
		case e, ok := <-w.Updates():
			if !ok {
				return nil, fmt.Errorf("watch bucket %q: watcher closed while loading", s.Bucket())
			}
			if e == nil { // all current values delivered
				if !timeout.Stop() || !unlink() {
					continue // it timed out or ctx ended just now: actx is ending
				}
				for k := range known {
					if !seen[k] {
						delete(known, k)
						s.sweep(k, nil)
						fn(broker.Event{Router: k})
					}
				}
				if st, err := s.state(ctx); err == nil {
					s.seen = st
				}
				made = true
				return stopFirst{w, cancel}, nil
			}
			seen[e.Key()] = true
			s.deliver(e, known, fn)
		}
	}
}

// stopFirst is a watcher whose context ends once it is stopped.
type stopFirst struct {
	jetstream.KeyWatcher
	cancel context.CancelFunc
}

// Stop stops the watcher and deletes its consumer, waiting for the
// server's answer, and then ends the watcher's context.
func (w stopFirst) Stop() error {
	defer w.cancel()
	return w.KeyWatcher.Stop()
}

// Resync makes Watch drop its watcher and start a new one at once, which
// delivers every key again, and asks the other stores for the disables
// they announced and have not written yet. Call it after a reconnect: the
// watcher's ordered consumer may have lived on a server that restarted or
// left the cluster, and would otherwise notice only after two missed
// heartbeats, about ten seconds, and news told while this store was away
// never reached it.
func (s *Store) Resync() {
	s.ask()
	select {
	case s.resync <- struct{}{}:
	default: // one is pending already
	}
}

// staleCheck is how often follow asks the server whether the watcher has
// missed something.
const staleCheck = 500 * time.Millisecond

// fullVerify is how often follow verifies the caller's view even when the
// bucket did not change: a view can go wrong on its own only through a
// defect, and this bounds how long one lasts.
const fullVerify = 30 * time.Second

// streamState is what follow compares of the bucket's stream.
type streamState struct {
	created           time.Time
	first, last, msgs uint64
}

// follow delivers changes until ctx ends, the watcher stops, or a new one
// is wanted (asked true): Resync asked, the watcher fell behind, or the
// bucket no longer holds what it delivered. Its ordered consumer lives on one
// server; when that server leaves the cluster while this replica's own
// connection is to another, there is no reconnect to tell us, and nats.go
// would notice only after two missed heartbeats. So twice a second follow
// reads the stream's state, and watches again when
//   - the stream was made again (its creation time changed);
//   - a key it delivered as live has lost its message (purged);
//   - what the stream held at the last check is still not delivered.
//
// When the stream changed since the last verify and everything was
// delivered, it calls verify.
func (s *Store) follow(ctx context.Context, w jetstream.KeyWatcher, known map[string]uint64, fn func(broker.Event), verify func(context.Context, uint64) error) (asked bool) {
	defer func() { _ = w.Stop() }()
	tick := time.NewTicker(staleCheck)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-s.resync:
			return true
		case <-tick.C:
			st, err := s.state(ctx)
			if gone(err) {
				s.log.Warn("the bucket was deleted; making it again and reading it afresh", slog.String("bucket", s.Bucket()))
				return true
			}
			if err != nil {
				continue
			}
			prev := s.seen
			s.seen = st
			if !st.created.Equal(s.created) {
				return true // watch logs it and tells the caller to forget revisions
			}
			// The watcher has had a second to deliver what the stream
			// held at the last check; if it has not, it is lost. A
			// stream's last message can also be gone (a marker that
			// expired) and so never delivered: one re-watch per such
			// sequence.
			if prev.created.Equal(st.created) && prev.last > s.delivered && prev.last != s.staleAt {
				s.staleAt = prev.last
				s.log.Warn("bucket watcher fell behind the bucket; watching again",
					slog.String("bucket", s.Bucket()), slog.Uint64("last_revision", prev.last), slog.Uint64("delivered", s.delivered))
				return true
			}
			if st.last > s.delivered && st.last != s.staleAt {
				continue // on its way: compared at the next check
			}
			if why := purged(st, known); why != "" {
				s.log.Warn("the bucket was purged; reading it afresh",
					slog.String("bucket", s.Bucket()), slog.String("why", why))
				return true
			}
			if verify != nil && (st != s.verified || !s.verifiedClean || time.Since(s.verifiedAt) >= fullVerify) {
				vctx, cancel := context.WithTimeout(ctx, staleCheck)
				err := verify(vctx, s.delivered)
				cancel()
				s.verified, s.verifiedClean, s.verifiedAt = st, err == nil, time.Now()
			}
		case e, ok := <-w.Updates():
			if !ok {
				return false
			}
			if e != nil {
				s.deliver(e, known, fn)
			}
		}
	}
}

// purged says why the stream in state st no longer holds what the
// watcher delivered, or "" when it does. Only asked once the watcher has
// delivered everything the stream holds: a key that expires loses its
// message just before the watcher hears its marker.
func purged(st streamState, known map[string]uint64) string {
	for k, rev := range known {
		if rev < st.first {
			return "the message of key " + strconv.Quote(k) + " is gone"
		}
	}
	return ""
}

// state is the bucket stream's state, asked for with a second's patience.
// Each answer, or its absence, is what Reach reports: the watcher asks
// twice a second while it follows, and at each attempt to watch again.
func (s *Store) state(ctx context.Context) (streamState, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	info, err := s.stream.Info(ctx)
	if err == nil {
		err = quorum(info)
	}
	if ctx.Err() == nil || errors.Is(ctx.Err(), context.DeadlineExceeded) {
		s.answered(err) // not when the caller gave up: the store is closing
	}
	if err != nil {
		return streamState{}, err
	}
	return streamState{created: info.Created, first: info.State.FirstSeq, last: info.State.LastSeq, msgs: info.State.Msgs}, nil
}

func (s *Store) deliver(e jetstream.KeyValueEntry, known map[string]uint64, fn func(broker.Event)) {
	s.delivered = max(s.delivered, e.Revision())
	ev := broker.Event{Router: e.Key(), Revision: e.Revision(), Created: e.Created()}
	s.settled(ev.Router, ev.Created)
	if e.Operation() != jetstream.KeyValuePut {
		if r, err := Decode(e.Key(), e.Value()); err == nil {
			ev.Memo = &r
		}
	} else {
		r, err := Decode(e.Key(), e.Value())
		if err != nil {
			s.log.Warn("ignoring unreadable router record; remove it with `broker enable KEY`",
				slog.String("bucket", s.Bucket()), slog.String("router", e.Key()),
				slog.Uint64("revision", e.Revision()), slog.Any("error", err))
		} else {
			ev.Entry = &broker.Entry{Record: r, Revision: e.Revision(), Created: e.Created()}
		}
	}
	if ev.Entry != nil {
		known[ev.Router] = ev.Revision
	} else {
		delete(known, ev.Router)
	}
	s.sweep(ev.Router, ev.Entry)
	fn(ev)
}
