package broker

import (
	"context"
	"errors"
	"log/slog"
	"time"
)

// report applies ev to this replica's view at once, when the policy says
// it changes anything, and writes the change to the store in the
// background. A report that changes nothing costs no write.
func (b *Broker) report(rt *route, ev event) {
	ev.at, ev.by = time.Now(), b.id
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return
	}
	ch, ok := b.cur().policy.decide(rt.path, rt.live, rt.memo, ev)
	if !ok {
		b.mu.Unlock()
		return
	}
	store := b.shared()
	b.apply(rt, ch, rt.rev, store != nil, ev.at)
	b.mu.Unlock()
	if store != nil && !ch.release {
		// The others hear of the disable before it lands, which an
		// election of the store can hold up for seconds.
		store.Announce(ch.rec)
	}
	b.write(rt, ev)
}

// write runs ev against the store's current state in the background:
// read, decide, compare-and-set, again on a conflict. Network errors are
// retried until the event no longer matters. A closed broker starts no
// write.
func (b *Broker) write(rt *route, ev event) {
	if b.shared() == nil {
		return
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		b.settle(rt, ev.kind)
		return
	}
	b.writes.Add(1)
	b.mu.Unlock()
	go func() {
		defer b.writes.Done()
		defer b.settle(rt, ev.kind)
		failing := false
		deadline := b.deadline(rt, ev)
		for wait := 50 * time.Millisecond; time.Now().Before(deadline); wait = min(2*wait, time.Second) {
			err := b.tryWrite(rt, ev, deadline)
			if err == nil {
				if failing {
					b.log.Info("router health written to the bucket after retrying", slog.String("router", rt.path))
				}
				return
			}
			if errors.Is(err, ErrConflict) {
				continue // the key changed under us: decide again at once
			}
			if !failing && ev.kind != claim {
				b.log.Warn("could not write router health to the bucket; other replicas do not know yet; retrying",
					slog.String("router", rt.path), slog.Any("error", err))
				failing = true
			}
			select {
			case <-b.writeContext.Done():
				return
			case <-time.After(wait):
			}
		}
	}()
}

// writeAttempt bounds one read and compare-and-set: a millisecond when the
// store is well. A JetStream stream that lost its leader takes seconds to
// elect another, and short attempts, retried, land within a second of it.
const writeAttempt = 2 * time.Second

// deadline is when writing ev no longer matters: a disable's or a
// carried-over disable's end, a probe claim's, or else a DisabledTime
// after it, as for a failure count or an enable.
func (b *Broker) deadline(rt *route, ev event) time.Time {
	switch ev.kind {
	case claim:
		return ev.at.Add(b.cur().policy.ProbeTimeout)
	case failure, carryOver:
		b.mu.Lock()
		defer b.mu.Unlock()
		if rt.live != nil && !rt.live.Until.IsZero() {
			return rt.live.Until
		}
	}
	return ev.at.Add(b.cur().policy.DisabledTime)
}

func (b *Broker) tryWrite(rt *route, ev event, deadline time.Time) error {
	end := time.Now().Add(writeAttempt)
	if deadline.Before(end) {
		end = deadline
	}
	ctx, cancel := context.WithDeadline(b.writeContext, end)
	defer cancel()
	store := b.shared()
	cur, live, err := store.Latest(ctx, rt.path)
	if err != nil {
		b.kvErrors.Add(1)
		return err
	}
	if !time.Now().Before(deadline) {
		// The read took so long (nats.go held it through an outage) that
		// what it would write has ended: written now, it would put the
		// router on probation on every replica.
		return nil
	}
	var liveRec *Record
	memo := cur.Record
	if live {
		b.mu.Lock()
		cur.Record, _ = b.sane(rt, cur)
		b.mu.Unlock()
		liveRec, memo = &cur.Record, Record{}
	}
	var ch change
	var ok bool
	if ev.kind == carryOver {
		// A disable held before the store was there: write it unless the
		// store has a live record, which then wins.
		b.mu.Lock()
		if !live && rt.live != nil {
			ch, ok = change{rec: *rt.live}, true
		}
		b.mu.Unlock()
	} else {
		ch, ok = b.cur().policy.decide(rt.path, liveRec, memo, ev)
	}
	if !ok {
		// The store already says what this replica wanted, or something
		// that wins over it: take the store's word.
		b.observe(Word(rt.path, cur, live), true)
		return nil
	}
	var rev uint64
	if ch.release {
		rev, err = store.Release(ctx, ch.rec, cur.Revision)
	} else {
		rev, err = store.Update(ctx, ch.rec, cur.Revision)
	}
	b.countWrite(err)
	if err != nil {
		return err
	}
	written := Event{Router: rt.path, Revision: rev}
	if ch.release {
		written.Memo = &ch.rec
	} else {
		written.Entry = &Entry{Record: ch.rec, Revision: rev}
	}
	b.observe(written, true)
	return nil
}

// settle ends this replica's claim, or its own pending change, when the
// write is done or has given up, and then takes the store's word that
// arrived meanwhile when it is newer than what the view now holds.
func (b *Broker) settle(rt *route, kind eventKind) {
	b.mu.Lock()
	if kind == claim {
		rt.claiming.Store(false)
		b.mu.Unlock()
		return
	}
	rt.pending = false
	held := rt.deferred
	rt.deferred = nil
	b.mu.Unlock()
	// A word without a revision (a key found missing when the watcher
	// started again) cannot be placed before or after the write; Verify
	// settles it against the store.
	if held != nil && held.Revision != 0 {
		b.observe(*held, false)
	}
}
