package broker

import (
	"log/slog"
	"sync/atomic"
	"time"
)

// route is one router: the pools it serves and this replica's view of its
// health.
type route struct {
	path  string
	seed  uint64 // sessionHash(path): the router's part in a session's order
	id    int    // index in Broker.members
	pools []*pool
	stats routeStats
	// price is the router's price in the pools in force; nil: none given.
	price atomic.Pointer[Price]
	// budgetState is the router's budget in the pools in force and what
	// it used.
	budgetState
	// clean is true when there is nothing a success report could change
	// in the view: no live record. It lets the success path skip the lock.
	clean atomic.Bool
	// claiming is true while this replica's claim on the probe is on its
	// way to the store.
	claiming atomic.Bool

	// The view, guarded by Broker.mu.
	live    *Record    // nil: no live record
	memo    Record     // from the last delete marker
	rev     uint64     // revision of the last change the view holds
	took    time.Time  // when the view took rev (zero: never took one)
	pending bool       // this replica's own change is on its way to the store
	phase   Phase      // as last logged
	probe   *probeSlot // this replica's claim on the router's probe
	clamped uint64     // revision of the last record warned about as reaching too far
	// heard is when the disable the view holds was decided by another
	// replica that announced it before its write landed (zero: none).
	// Until the store says something newer of the router, the view keeps
	// it: an older word of the store predates the disable.
	heard time.Time
	// changed is when the store kept the change the view last took from
	// it (zero: unknown). An announcement decided before it is stale.
	changed time.Time
	// stored is the live record as the store holds it, when the policy
	// held it shorter (see Policy.Clamp); nil otherwise.
	stored *Record
	// deferred is the newest word of the store that arrived while this
	// replica's own change was on its way (pending), held back until the
	// write settles and then taken if it is newer than the write.
	deferred *Event
	// confirmed is what the view held from the store before it heard an
	// announced disable (heard not zero); the view goes back to it when
	// the store has not confirmed the disable by heardEnd.
	confirmed *Record
	heardEnd  time.Time
}

// maxUnknown bounds how many routers no pool has are named in warnings,
// so that a bucket shared with other deployments costs bounded memory.
const maxUnknown = 256

// Observe applies a change from the shared store to this replica's view.
// Changes to routers no pool knows are ignored, with one warning each.
func (b *Broker) Observe(ev Event) {
	b.watchEvents.Add(1)
	b.lastWatch.Store(time.Now().UnixNano())
	b.observe(ev, false)
}

// observe applies ev; own says it is this replica's own write, or the
// store's answer to one.
func (b *Broker) observe(ev Event, own bool) {
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	rt := b.cur().routers[ev.Router]
	if b.closed {
		return
	}
	if ev.Reset {
		b.rebase()
		return
	}
	if rt == nil {
		if ev.Entry != nil {
			b.warnUnknown(ev.Router)
		}
		return
	}
	b.observeLocked(rt, ev, own, now)
}

// observeLocked applies ev to rt's view. b.mu must be held.
func (b *Broker) observeLocked(rt *route, ev Event, own bool, now time.Time) {
	if ev.Provisional {
		b.hear(rt, ev, now)
		return
	}
	if ev.Revision != 0 && ev.Revision <= rt.rev {
		return // the view already holds this change or a later one
	}
	if !own && rt.pending && (ev.Entry == nil || phase(&ev.Entry.Record, now) == Enabled) {
		// An enable older than this replica's change on its way must not
		// undo it; but it may as well be newer: an operator deleted the
		// key just after the write landed, before the write's ack came
		// back. The watcher then never delivers the put at all (the
		// bucket keeps one message per key, and the delete removed it
		// before it was delivered), so the delete comes while the change
		// is still pending. Which one it is can only be told from the
		// write's revision: hold it back until the write settles (see
		// settle), and take it then if it is newer.
		if rt.deferred == nil || ev.Revision > rt.deferred.Revision {
			rt.deferred = &ev
		}
		return
	}
	if !own && !rt.heard.IsZero() && ev.Created.Before(rt.heard) {
		return // the store's word predates the disable another replica announced
	}
	ch := change{release: ev.Entry == nil}
	clamped := false
	switch {
	case ev.Entry != nil:
		ch.rec, clamped = b.sane(rt, *ev.Entry)
	case ev.Memo != nil:
		ch.rec = *ev.Memo
	}
	b.apply(rt, ch, ev.Revision, false, now)
	if clamped {
		stored := ev.Entry.Record
		rt.stored = &stored
	}
	if ev.Created.After(rt.changed) {
		rt.changed = ev.Created
	}
}

// hear applies a disable another replica or an operator announced before
// its write landed, when it takes the router out for longer than the view
// does: it never lifts or shortens a disable, and never touches a manual
// one. An automatic one's times are held to the policy from when it was
// heard, as a record's are from when the store kept it. b.mu must be
// held.
func (b *Broker) hear(rt *route, ev Event, now time.Time) {
	if ev.Entry == nil {
		return
	}
	r, _ := b.cur().policy.Clamp(Entry{Record: ev.Entry.Record, Created: now})
	switch ph := phase(rt.live, now); {
	case !r.ActiveAt(now), ph == Manual, ph == Disabled && !r.Until.IsZero() && !r.Until.After(rt.live.Until):
		return
	case !rt.changed.IsZero() && !r.At.After(rt.changed):
		return // the store has said something newer since it was decided
	}
	r.Router, r.Probe = rt.path, nil
	if rt.heard.IsZero() {
		rt.confirmed = rt.live
	}
	rt.live = &r
	rt.heard = r.At
	if rt.heard.IsZero() || rt.heard.After(now) {
		rt.heard = now
	}
	rt.heardEnd = now.Add(b.hold)
	rt.clean.Store(false)
	b.refresh(rt, now)
	b.arm(now)
}

// warnUnknown warns once about a record for a router no pool has.
// b.mu must be held.
func (b *Broker) warnUnknown(router string) {
	switch {
	case b.unknown[router]:
	case len(b.unknown) < maxUnknown:
		b.unknown[router] = true
		b.log.Warn("ignoring a record for a router no pool has; remove it with `broker enable KEY` if it is a mistake",
			slog.String("router", clip(router)))
	case len(b.unknown) == maxUnknown:
		b.unknown[""] = true // once: no more names after this
		b.log.Warn("ignoring records for more routers no pool has; not naming each; `broker status` lists them",
			slog.Int("named", maxUnknown))
	}
}

// sane returns e's record with times no automatic disable could have: an
// Until beyond the longest disable, or none at all, and a probe claim
// beyond the probe timeout, counted from when the store kept the record.
// Such a record was written by hand or by a broken writer; taken at its
// word it would strand the router. Manual records are an operator's word
// and kept as they are. b.mu must be held when rt is not nil.
func (b *Broker) sane(rt *route, e Entry) (r Record, clamped bool) {
	r, clamped = b.cur().policy.Clamp(e)
	if clamped && rt != nil && rt.clamped != e.Revision {
		rt.clamped = e.Revision
		if !r.Until.Equal(e.Record.Until) || r.Probe != e.Record.Probe {
			b.log.Warn("record reaches further than the failure policy allows; using the longest disable instead",
				slog.String("router", r.Router), slog.Time("until", e.Record.Until), slog.Time("clamped_to", r.Until),
				slog.Uint64("revision", e.Revision))
		}
		if r.Level != e.Record.Level {
			b.log.Warn("record's backoff level is out of range; using the nearest the failure policy allows",
				slog.String("router", clip(r.Router)), slog.Int("level", e.Record.Level), slog.Int("used", r.Level),
				slog.Int("max_level", b.cur().policy.maxLevel()), slog.Uint64("revision", e.Revision),
				slog.String("hint", "levels go from 0 to the cap; a record written by hand may leave \"level\" out"))
		}
	}
	return r, clamped
}

// apply sets rt's view to ch, logs a change of phase, rebuilds the pools
// and re-arms the timer. b.mu must be held.
func (b *Broker) apply(rt *route, ch change, rev uint64, pending bool, now time.Time) {
	if ch.release {
		rt.live, rt.memo = nil, ch.rec
	} else {
		r := ch.rec
		rt.live = &r
	}
	if rev != 0 && rev != rt.rev {
		// Told at once, so that an operator's `broker disable` hears
		// which replicas hold its write (see Taken).
		rt.took = now
		defer b.nudge()
	}
	rt.rev, rt.pending, rt.heard, rt.stored, rt.confirmed = rev, pending, time.Time{}, nil, nil
	rt.clean.Store(rt.live == nil)
	b.refresh(rt, now)
	b.arm(now)
}

// refresh brings rt's phase, probe slot and pools up to date at now, and
// claims the probe when the router is on probation and nobody holds it.
// b.mu must be held.
func (b *Broker) refresh(rt *route, now time.Time) {
	ph := phase(rt.live, now)
	var held *Probe
	if ph == Probation && rt.live.Probe != nil && now.Before(rt.live.Probe.Until) {
		held = rt.live.Probe
	}
	if ph == Probation && held == nil && b.shared() == nil {
		// Local mode: this replica is the whole fleet and claims at once.
		rt.live.Probe = &Probe{By: b.id, At: now, Until: now.Add(b.cur().policy.ProbeTimeout)}
		held = rt.live.Probe
	}
	switch {
	case held != nil && held.By == b.id:
		if rt.probe == nil || !rt.probe.at.Equal(held.At) {
			rt.probe = &probeSlot{at: held.At, route: rt}
			rt.probe.token.Store(true)
		}
	default:
		rt.probe = nil
	}
	for _, p := range rt.pools {
		b.rebuild(p, now)
	}
	// Logged after the snapshots changed, so a replica that has said a
	// router is out no longer chooses it.
	if ph != rt.phase {
		b.logPhase(rt, ph)
		rt.phase = ph
	}
}

// Reasons a router is enabled again, as the transitions metric labels
// them; anything else a record says is "other", so that text in the
// bucket cannot grow the metric.
var enableReasons = map[string]bool{
	"deleted": true, "manual disable ended": true, reasonProbeSucceeded: true, ReasonExpired: true,
}

func (b *Broker) logPhase(rt *route, ph Phase) {
	reason := "other"
	switch ph {
	case Enabled:
		cause := "deleted"
		switch {
		case rt.live != nil:
			cause = "manual disable ended"
		case rt.memo.Reason != "" && !rt.memo.Ended.IsZero():
			cause = rt.memo.Reason
		}
		if enableReasons[cause] {
			reason = cause
		}
		b.log.Info("router enabled", slog.String("router", rt.path), slog.String("cause", clip(cause)))
	case Disabled, Manual:
		r := rt.live
		reason = disableReason(*r)
		b.log.Warn("router disabled",
			slog.String("router", rt.path), slog.Int("status", r.Status),
			slog.String("reason", clip(r.Reason)), slog.Time("until", r.Until),
			slog.Int("backoff_level", r.Level), slog.Bool("manual", r.Manual), slog.String("by", clip(r.By)))
	case Probation:
		reason = "disable ended"
		b.log.Info("router on probation: one probe call decides", slog.String("router", rt.path))
	}
	b.transitions[transition{rt.path, ph.String(), reason}]++
}

// next is when rt's phase or probe claim changes by itself, or zero.
func next(rt *route, now time.Time) time.Time {
	r := rt.live
	if !rt.heard.IsZero() {
		// An announced disable the store has not confirmed ends at its
		// Until or at the hold, whichever comes first, and the view goes
		// back to the store's word (see unhear): it never goes on
		// probation, as nothing in the store backs it.
		if r != nil && !r.Until.IsZero() && r.Until.Before(rt.heardEnd) {
			return r.Until
		}
		return rt.heardEnd
	}
	switch phase(r, now) {
	case Manual, Disabled:
		return r.Until
	case Probation:
		if r.Probe != nil && now.Before(r.Probe.Until) {
			return r.Probe.Until
		}
	}
	return time.Time{}
}

// arm sets the timer to the earliest time a view changes by itself.
// b.mu must be held.
func (b *Broker) arm(now time.Time) {
	b.disarm()
	if b.closed {
		return
	}
	var at time.Time
	for _, rt := range b.cur().members {
		if t := next(rt, now); !t.IsZero() && (at.IsZero() || t.Before(at)) {
			at = t
		}
	}
	if !at.IsZero() {
		b.ticks.Add(1)
		b.timer = time.AfterFunc(at.Sub(now), func() {
			defer b.ticks.Done()
			b.tick()
		})
	}
}

// disarm stops the timer. A callback that already fired still runs, sees
// the closed broker or a new timer, and counts itself done. b.mu must be
// held.
func (b *Broker) disarm() {
	if b.timer != nil && b.timer.Stop() {
		b.ticks.Done()
	}
	b.timer = nil
}

// tick moves every view whose time has come: disables that end go on
// probation, lapsed probe claims are claimed again, manual disables that
// run out are enabled.
func (b *Broker) tick() {
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	for _, rt := range b.cur().members {
		switch {
		case !rt.heard.IsZero() && (!now.Before(rt.heardEnd) || rt.live == nil || !rt.live.ActiveAt(now)):
			b.unhear(rt, now)
		case rt.live != nil:
			b.refresh(rt, now)
		}
	}
	b.arm(now)
}

// unhear drops an announced disable the store has not confirmed by its
// Until or within the hold (Config.AnnouncementHold): the view goes back to the store's
// word. b.mu must be held.
func (b *Broker) unhear(rt *route, now time.Time) {
	if !now.Before(rt.heardEnd) {
		b.log.Warn("an announced disable never reached the bucket; following the bucket again",
			slog.String("router", rt.path), slog.Duration("held", b.hold))
	}
	rt.live, rt.confirmed, rt.heard = rt.confirmed, nil, time.Time{}
	rt.clean.Store(rt.live == nil)
	b.refresh(rt, now)
}
