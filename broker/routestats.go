package broker

// A router's statistics, as every strategy reads them: calls chosen and
// reported, failures, latency and rate-limit headroom, counted over
// sliding windows and read with atomic loads on the hot path.

import (
	"sync/atomic"
	"time"
)

// window counts events over the last span, in slots of span/slots.
type window struct {
	slot  time.Duration
	total atomic.Int64 // every event ever
	// marks[i] is total at the start of slot i (mod slots); at is the
	// slot the marks were last advanced to. Both are written by advance
	// only, under the stats lock.
	marks [slots]int64
	at    int64
	// seen is total as of the last advance (Quiet: a call since?).
	seen int64
}

// newWindow starts a window at now: every event from now counts.
func newWindow(span time.Duration, now time.Time) *window {
	w := &window{slot: max(span/slots, time.Millisecond)}
	w.at = now.UnixNano() / int64(w.slot)
	return w
}

func (w *window) add(n int64) { w.total.Add(n) }

// advance moves the window to now, total being the events ever. Called
// under the stats lock.
func (w *window) advance(now time.Time, total int64) {
	slot := now.UnixNano() / int64(w.slot)
	for s := max(w.at+1, slot-slots+1); s <= slot; s++ {
		w.marks[s%slots] = total
	}
	w.at = slot
	w.seen = total
}

// count is the events within the window as last advanced, total being the
// events ever: those since the start of its oldest slot. Called under the
// stats lock.
func (w *window) count(total int64) int64 {
	return total - w.marks[(w.at+1)%slots]
}

// slides is when, in unix nanoseconds, the count as last advanced next
// falls, total being the events ever: at the start of the first slot that
// pushes out a slot holding events; 0 when the window holds none. Called
// under the stats lock.
func (w *window) slides(total int64) int64 {
	oldest := w.marks[(w.at+1)%slots]
	if total == oldest {
		return 0
	}
	// Advancing to slot at+j makes the slot after the oldest the oldest:
	// the count falls once that slot's mark is above the oldest's.
	j := int64(1)
	for ; j < slots && w.marks[(w.at+1+j)%slots] == oldest; j++ {
	}
	return (w.at + j) * int64(w.slot)
}

// routeStats are one router's statistics.
type routeStats struct {
	chosen, reported *window // this replica's, within the in-flight bound
	calls, failures  *window // this replica's, within the failure-rate window

	// lastSuccess is when this replica last heard a success reported
	// (unix nanoseconds), and failing the failures since (guarded by the
	// fleet's lock).
	lastSuccess atomic.Int64
	failing     []time.Time
	failingLen  atomic.Int32 // len(failing), read without the lock
	// newest is the last failure this replica heard reported itself, and
	// acted whether the fleet's count reached the threshold with it
	// (guarded by the fleet's lock).
	newest newestFailure

	// Set by Refresh: the fleet's chosen minus reported within the bound,
	// and this replica's totals then, so that a call adds its own choice
	// and report at once.
	base, chosenMark, reportedMark atomic.Int64
	fleetChosen                    atomic.Int64 // the fleet's choices of it within the bound (set by Refresh)

	latencyNs atomic.Int64 // EWMA of upstream time; 0: no sample yet
	samples   atomic.Int64
	limits    atomic.Pointer[RateLimits] // the last the upstream said; nil: none
	// room is what the headroom strategy reads on a call, set from limits
	// when a transaction is heard and at every Refresh, so that a call
	// reads no clock; nil: the upstream said nothing.
	room atomic.Pointer[room]
	// picks are the times of this replica's last pickRing choices of the
	// router (unix nanoseconds), the n-th at n % pickRing, and tally
	// what it takes off the last answer's count (see tally; nil: none).
	picks [pickRing]atomic.Int64
	tally atomic.Pointer[tally]

	use usageCounts // tokens and spend, from the transaction log

	// sessionsIn and sessionsOut count the sessions that moved to and
	// from the router, as the transaction log told (see sessionMemory).
	sessionsIn, sessionsOut atomic.Uint64
	// pinned counts the sessions remembered whose last call used the
	// router (see sessionMemory): what the sessions strategy reads.
	pinned atomic.Int64
}

// newestFailure is a failure report as this replica heard it.
type newestFailure struct {
	at         time.Time
	status     int
	retryAfter time.Duration
	acted      bool
}

func newRouteStats(bound, rateWindow time.Duration, now time.Time) routeStats {
	return routeStats{chosen: newWindow(bound, now), reported: newWindow(bound, now),
		calls: newWindow(rateWindow, now), failures: newWindow(rateWindow, now)}
}

func (s *routeStats) inFlight() int64 {
	n := s.base.Load() + (s.chosen.total.Load() - s.chosenMark.Load()) - (s.reported.total.Load() - s.reportedMark.Load())
	return max(n, 0)
}

func (s *routeStats) addLatency(d time.Duration) {
	d = max(d, time.Nanosecond) // 0 means no sample
	old := s.latencyNs.Load()
	if old == 0 {
		s.latencyNs.Store(int64(d))
	} else {
		s.latencyNs.Store(old + int64(latencyWeight*float64(int64(d)-old)))
	}
	s.samples.Add(1)
}

func (s *routeStats) latency() (time.Duration, bool) {
	ns := s.latencyNs.Load()
	return time.Duration(ns), ns != 0
}

// slots is how many slots a window keeps: it slides a slot at a time.
const slots = 120
