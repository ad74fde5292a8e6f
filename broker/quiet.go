package broker

import (
	"sync/atomic"
	"time"
)

// A replica with no calls has nothing new to tell, and nothing to slide:
// it need not refresh every few milliseconds. Quiet says how long it may
// wait before the next Refresh would change anything, and arms Stirred,
// which a call chosen or reported, a transaction heard or another
// replica's changed counts cut short. An idle fleet then wakes only for
// its heartbeat.

// quiet is what Quiet arms and a call disarms.
type quiet struct {
	// asleep is set by Quiet and cleared by the first stir after it: a
	// call reads it once, and writes nothing while it is clear.
	asleep  atomic.Bool
	stirred chan struct{}
}

// stir tells a replica that waits in Quiet that something happened. It
// never blocks; while the replica does not wait, it is one atomic load.
func (b *Broker) stir() {
	if b.quiet.asleep.Load() && b.quiet.asleep.CompareAndSwap(true, false) {
		select {
		case b.quiet.stirred <- struct{}{}:
		default:
		}
	}
}

// Stir tells a replica that waits in Quiet that something it tells changed
// (its configuration's revision, a revision refused): it tells at once.
func (b *Broker) Stir() { b.stir() }

// Stirred receives when, after Quiet, a call was chosen or reported, a
// transaction heard, or another replica told changed counts: the replica
// refreshes and tells at once, and ticks again.
func (b *Broker) Stirred() <-chan struct{} { return b.quiet.stirred }

// Wake says the replica ticks again: calls stir it no more until the next
// Quiet.
func (b *Broker) Wake() { b.quiet.asleep.Store(false) }

// Quiet arms Stirred and returns how long after now, at most most, this
// replica may wait for its next Refresh when nothing stirs it: 0 when a
// call came since the last Refresh; else until its own counts next slide
// out of their windows, a budget lets a router or pool back in, or an
// upstream's rate limit resets, whichever is first. Call it after Refresh.
func (b *Broker) Quiet(now time.Time, most time.Duration) time.Duration {
	b.quiet.asleep.Store(true) // before looking: a call from now on stirs
	wait := most
	soon := func(at time.Time) {
		if d := at.Sub(now); d < wait {
			wait = max(d, 0)
		}
	}
	soonNs := func(ns int64) {
		if ns != 0 {
			soon(time.Unix(0, ns))
		}
	}
	t := b.cur()
	b.fleet.mu.Lock()
	for _, rt := range t.members {
		s := &rt.stats
		for _, w := range []*window{s.chosen, s.reported, s.calls, s.failures} {
			total := w.total.Load()
			if total != w.seen {
				b.fleet.mu.Unlock()
				return 0 // a call since the last Refresh
			}
			soonNs(w.slides(total))
		}
	}
	b.fleet.mu.Unlock()
	for _, rt := range t.members {
		soonNs(rt.spentUntil())
		if l := rt.stats.limits.Load(); l != nil {
			for _, r := range []time.Time{l.ResetRequests, l.ResetTokens} {
				if r.After(now) {
					soon(r)
				}
			}
		}
	}
	for _, p := range t.pools {
		if p.budget != nil {
			soonNs(p.budget.spentUntil())
		}
	}
	return wait
}

// ReadsInFlight reports whether a pool in force chooses by the fleet's
// calls in flight (Pool.ReadsInFlight): the replica then tells its counts
// every few milliseconds while they change; otherwise the others read
// only its failures, which it tells at once (Nudged), and its calls within
// the failure-rate window, which a tenth of a second does not change much.
func (b *Broker) ReadsInFlight() bool { return b.cur().readsInFlight }

// RateWindow is the failure-rate window of the policy in force: the
// calls counted within it are what the others read of a replica whose
// pools do not read the calls in flight.
func (b *Broker) RateWindow() time.Duration { return b.cur().policy.RateWindow }
