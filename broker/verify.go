package broker

import (
	"context"
	"errors"
	"log/slog"
	"time"
)

// ErrUnsettled is what Verify gives when a router could not be compared
// with the store because a change of it is on its way: this replica's own
// write, or a disable another replica announced. Verify again later.
var ErrUnsettled = errors.New("a router's change is on its way to the store")

// Verify reads every router's last change from the store and makes the
// view agree with it where it does not. It is the net under the watcher:
// whatever change the watcher did not deliver or the view did not take,
// the view holds the store's word once Verify has run after the change.
// upTo is the store's last revision the caller's watcher has delivered: a
// router whose last change is newer is on its way, not missed, and is
// left to the watcher. A router whose store revision is older than the
// view's (the bucket was purged or made again) is read twice before the
// view goes back to it, so that a change the watcher delivered between
// the read and the comparison is not undone. It stops at the first read
// that fails and returns its error; ErrUnsettled when a router could not
// be compared; the routers it could read are made to agree.
func (b *Broker) Verify(ctx context.Context, upTo uint64) error {
	store := b.shared()
	if store == nil {
		return nil
	}
	var unsettled error
	for _, rt := range b.cur().members {
		switch err := b.verify(ctx, store, rt, upTo, true); {
		case errors.Is(err, ErrUnsettled):
			unsettled = err
		case err != nil:
			return err
		}
	}
	return unsettled
}

func (b *Broker) verify(ctx context.Context, store Store, rt *route, upTo uint64, again bool) error {
	e, live, err := store.Latest(ctx, rt.path)
	if err != nil {
		return err
	}
	if e.Revision > upTo {
		return ErrUnsettled // written since the watcher's last word: on its way
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	if rt.pending || !rt.heard.IsZero() {
		b.mu.Unlock()
		return ErrUnsettled
	}
	view := rt.rev
	agrees := e.Revision == view || (e.Revision == 0 && rt.live == nil)
	b.mu.Unlock()
	switch {
	case agrees:
		return nil
	case e.Revision < view && again:
		return b.verify(ctx, store, rt, upTo, false)
	}
	ev := Word(rt.path, e, live)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed || rt.pending || !rt.heard.IsZero() || rt.rev != view {
		return nil // the view changed meanwhile: the next Verify compares again
	}
	b.log.Warn("this replica's view of a router differed from the bucket; took the bucket's word",
		slog.String("router", rt.path), slog.Uint64("view_revision", view), slog.Uint64("bucket_revision", e.Revision),
		slog.Bool("disabled_in_bucket", live))
	b.repairs.Add(1)
	rt.rev = 0 // the store's word wins whatever revision the view held
	b.observeLocked(rt, ev, false, time.Now())
	return nil
}

// rebase forgets the revisions the view holds, for a store whose
// revisions started over (see Event.Reset). b.mu must be held.
func (b *Broker) rebase() {
	for _, rt := range b.cur().members {
		rt.rev, rt.deferred, rt.changed = 0, nil, time.Time{}
	}
}
