package broker

// What the headroom strategy takes off the requests an upstream last said
// were left. The count in an answer already holds every call that reached
// the upstream before that answer's call did: only the calls chosen since
// that call was sent are still to come off it, not every call in flight
// (which took off calls counted twice, and held a PTU back a few calls
// from the end of each quota window). And each replica sees its own
// choices at once but the others' only when they tell them: were the
// last requests of a window left to every replica, three replicas would
// send three times what is left between two words. So each replica holds
// a share of what the first answer of a window said was left, and sends
// no more than its share within that window.

import (
	"slices"
	"time"
)

const (
	// pickRing is how many of its latest choices of a router a replica
	// keeps the time of, to count those made since an answered call was
	// sent. More since then (a busy router with slow answers) counts as
	// every call in flight: more than it is, never fewer.
	pickRing = 128
	// pickSlack is how much earlier than the answered call's start a
	// choice counts as made after it: a call chosen just before reaches
	// the upstream just after, and gecholog's clock and the replica's
	// may be a little apart.
	pickSlack = 5 * time.Millisecond
)

// tally is what this replica takes off a router's last rate-limit answer.
type tally struct {
	// mark is chosen.total less this replica's choices of the router since
	// the answered call was sent: chosen.total - mark is what it chose that
	// the answer did not count.
	mark int64
	// share is this replica's share of the requests the first answer of
	// the upstream's current quota window said were left, shareMark the
	// mark as of that answer, and window that window's reset (unix
	// nanoseconds); share < 0: no share (no request count said).
	share, shareMark int64
	window           int64
	// first is the remaining count that first answer said.
	first int64
}

// picked notes a choice, the n-th of the router, at now.
func (s *routeStats) picked(n int64, now time.Time) {
	s.picks[n%pickRing].Store(now.UnixNano())
}

// pickedSince is how many of its choices of the router this replica made
// from cut on (unix nanoseconds), of total ever: exact for the last
// pickRing, and when all of those are, every call in flight.
func (s *routeStats) pickedSince(total, cut int64) int64 {
	var n int64
	for j := total; j > max(total-pickRing, 0); j-- {
		if s.picks[j%pickRing].Load() >= cut {
			n++
		}
	}
	if n == pickRing {
		n = max(n, s.inFlight())
	}
	return n
}

// tallied returns the tally of rt for an answer l heard at now, given the
// last (nil: none): the choices since l's call was sent, and, when l is
// the first answer of a quota window, this replica's share of what it says
// is left.
func (b *Broker) tallied(rt *route, l *RateLimits, old *tally, now time.Time) *tally {
	s := &rt.stats
	total := s.chosen.total.Load()
	// When the call was sent: gecholog's timer; were gecholog's clock
	// ahead of this one, the upstream's time back from now (which is late
	// by the response context's round trip, within the slack).
	sent := now
	if !l.Sent.IsZero() && !l.Answered.IsZero() {
		sent = now.Add(-l.Answered.Sub(l.Sent))
		if l.Sent.Before(sent) {
			sent = l.Sent
		}
	}
	t := &tally{mark: total - s.pickedSince(total, sent.Add(-pickSlack).UnixNano()), share: -1}
	if l.RemainingRequests < 0 {
		return t
	}
	if old != nil && old.share >= 0 && sent.UnixNano() < old.window && l.RemainingRequests <= old.first {
		// The same window: the share stands, whatever the order the
		// window's answers come back in.
		t.share, t.shareMark, t.window, t.first = old.share, old.shareMark, old.window, old.first
		return t
	}
	// A new window (its call was sent after the last one's reset, or more
	// is left than at its first answer): split what is left between the
	// replicas telling their counts, the remainder to the first by name,
	// so that the shares add up to it (Hermite: the floors of
	// (R + rank) / n over the ranks add up to R).
	n, rank := b.ranked()
	t.share = (l.RemainingRequests + rank) / n
	t.shareMark, t.first = t.mark, l.RemainingRequests
	if !l.ResetRequests.IsZero() {
		t.window = l.ResetRequests.UnixNano()
	}
	return t
}

// ranked is the replicas telling their counts, this one included, and
// this one's place among them by name.
func (b *Broker) ranked() (n, rank int64) {
	b.fleet.mu.Lock()
	defer b.fleet.mu.Unlock()
	ids := make([]string, 0, len(b.fleet.peers)+1)
	for id := range b.fleet.peers {
		ids = append(ids, id)
	}
	ids = append(ids, b.id)
	slices.Sort(ids)
	return int64(len(ids)), int64(slices.Index(ids, b.id))
}

// taken is what comes off r's requests left for this replica's next
// call: its choices since the answered call was sent, or more when that
// leaves it beyond its share of the window; the calls in flight over the
// fleet when r was set without a tally.
func (s *routeStats) taken(r *room) int64 {
	if r.mark < 0 {
		return s.inFlight()
	}
	total := s.chosen.total.Load()
	n := total - r.mark
	if r.quota >= 0 {
		// left = min(requests - n, quota - since its mark)
		n = max(n, r.requests-r.quota+(total-r.quotaMark))
	}
	return n
}
