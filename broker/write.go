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
		var conflicts, failures int
		var told time.Time // when a failure was last logged
		var last error
		start, deadline := time.Now(), b.deadline(rt, ev)
		for time.Now().Before(deadline) {
			woken := b.woken()
			err := b.tryWrite(rt, ev, deadline, woken)
			if err != nil && isClosed(woken) {
				continue // the store answers again (RetryWrites): at once
			}
			if err == nil {
				if failures > 0 {
					b.log.Info("router health written to the bucket after retrying", slog.String("router", rt.path),
						slog.Int("attempts", conflicts+failures+1), slog.Duration("after", time.Since(start).Round(time.Millisecond)))
				}
				return
			}
			b.kvFailures[writeCause(err)].Add(1)
			var wait time.Duration
			if errors.Is(err, ErrConflict) {
				// The key changed under us: decide again, at once the
				// first time.
				if conflicts++; conflicts > 1 {
					wait = pause(conflictPause, conflicts-1)
				}
			} else {
				failures++
				wait = pause(failurePause, failures)
				last = err
				if ev.kind != claim && time.Since(told) >= failingRepeat {
					msg := "could not write router health to the bucket; other replicas do not know yet; retrying"
					if failures > 1 {
						msg = "still cannot write router health to the bucket; retrying"
					}
					b.log.Warn(msg, slog.String("router", rt.path), slog.String("cause", WriteCauses[writeCause(err)]),
						slog.Any("error", err), slog.Int("attempts", conflicts+failures))
					told = time.Now()
				}
			}
			select {
			case <-b.writeContext.Done():
				if ev.kind != claim {
					// Close gave up waiting: the write is lost, and no
					// other replica will hear of it; say so once.
					b.log.Warn("stopping: gave up writing router health to the bucket; the other replicas do not know of it",
						slog.String("router", rt.path), slog.String("cause", WriteCauses[writeCause(err)]), slog.Any("error", err),
						slog.Int("attempts", conflicts+failures), slog.Duration("for", time.Since(start).Round(time.Millisecond)))
				}
				return
			case <-woken:
			case <-time.After(wait):
			}
		}
		if failures > 0 && ev.kind != claim {
			b.log.Warn("gave up writing router health to the bucket: what it said has ended", slog.String("router", rt.path),
				slog.String("cause", WriteCauses[writeCause(last)]), slog.Any("error", last), slog.Int("attempts", conflicts+failures))
		}
	}()
}

// RetryWrites has every write that waits to retry do so at once, and cuts
// short each attempt waiting for an answer, which will not come: call it
// when the store answers again after it did not (a partition healed, a
// leader elected), so that what was kept meanwhile lands at once rather
// than after the pauses and attempts under way.
func (b *Broker) RetryWrites() {
	b.wakeMu.Lock()
	defer b.wakeMu.Unlock()
	if b.wake != nil {
		close(b.wake)
	}
	b.wake = make(chan struct{})
}

// woken is closed by the next RetryWrites.
func (b *Broker) woken() <-chan struct{} {
	b.wakeMu.Lock()
	defer b.wakeMu.Unlock()
	if b.wake == nil {
		b.wake = make(chan struct{})
	}
	return b.wake
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// failingRepeat is how often a write that keeps failing says so again.
const failingRepeat = time.Minute

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

func (b *Broker) tryWrite(rt *route, ev event, deadline time.Time, woken <-chan struct{}) error {
	end := time.Now().Add(writeAttempt)
	if deadline.Before(end) {
		end = deadline
	}
	ctx, cancel := context.WithDeadline(b.writeContext, end)
	defer cancel()
	stop := make(chan struct{})
	defer close(stop)
	go func() { // an attempt that waits on a store that is back again is cut short
		select {
		case <-woken:
			cancel()
		case <-stop:
		}
	}()
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
