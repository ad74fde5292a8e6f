package broker

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// headroom is the share of its rate limit the router has left at now, as
// its upstream last said (false: it said nothing), as operators see it.
func (s *routeStats) headroom(now time.Time) (float64, bool) {
	l := s.limits.Load()
	if l == nil {
		return 0, false
	}
	return l.headroom(now), true
}

// headroom is the share left at now of the scarcer of requests and tokens,
// from 0 to 1.
func (l *RateLimits) headroom(now time.Time) float64 {
	r := l.roomAt(now)
	return r.share(0)
}

// waitsUntil is when a router its upstream said has none left may take
// calls again, as of now: the later reset of a count said to be 0 whose
// reset is still to come; zero when it is not waiting.
func (s *routeStats) waitsUntil(now time.Time) time.Time {
	l := s.limits.Load()
	if l == nil {
		return time.Time{}
	}
	var t time.Time
	if l.RemainingRequests == 0 && now.Before(l.ResetRequests) {
		t = l.ResetRequests
	}
	if l.RemainingTokens == 0 && now.Before(l.ResetTokens) && l.ResetTokens.After(t) {
		t = l.ResetTokens
	}
	return t
}

// RateLimits is what an upstream's rate-limit headers said of what is left:
// OpenAI's and Azure OpenAI's x-ratelimit-*, Anthropic's
// anthropic-ratelimit-*. A negative count is one not said.
type RateLimits struct {
	RemainingRequests, LimitRequests int64
	RemainingTokens, LimitTokens     int64
	// ResetRequests and ResetTokens are when each count is full again;
	// zero when not said.
	ResetRequests, ResetTokens time.Time
	// Sent and Answered are when the answered call went to the upstream
	// and when its answer came, by gecholog's clock (its
	// outbound_inbound_timer; zero: not known). The count left holds
	// every call that reached the upstream before this one: only those
	// chosen since Sent are still to come off it. A transaction heard
	// after one answered later says nothing newer of what is left.
	Sent, Answered time.Time
}

// unsaidReset is when a count said without a reset is taken as full again.
const unsaidReset = time.Minute

// Known reports whether the headers said anything of what is left.
func (l RateLimits) Known() bool { return l.RemainingRequests >= 0 || l.RemainingTokens >= 0 }

// room is a router's rate limit left as of its last answer, with the
// resets that have passed applied.
type room struct {
	requests, limit int64   // requests left and their limit; requests < 0: not said, or reset since
	tokens          float64 // the share of tokens left, 0 to 1 (1: not said, or reset since)
	// When requests and tokens are full again (unix nanoseconds; 0: not
	// said), so that a router with none left takes calls from its reset
	// on, not from the next refresh.
	requestsReset, tokensReset int64
	// mark, quota and quotaMark are the tally's mark, share and
	// shareMark (see tally); mark < 0: none, and the calls in flight come
	// off requests.
	mark, quota, quotaMark int64
}

// setRoom sets s.room from s.limits at now. b.fleet.mu must be held.
func (s *routeStats) setRoom(now time.Time) { s.roomFrom(s.limits.Load(), now) }

// roomFrom sets s.room from l at now. b.fleet.mu must be held.
func (s *routeStats) roomFrom(l *RateLimits, now time.Time) {
	if l == nil {
		s.room.Store(nil)
		return
	}
	r := l.roomAt(now)
	if t := s.tally.Load(); t != nil {
		r.mark, r.quota, r.quotaMark = t.mark, t.share, t.shareMark
	}
	if old := s.room.Load(); old == nil || *old != r {
		s.room.Store(&r)
	}
}

// roomAt is what l leaves at now: a count past its reset is full again.
func (l *RateLimits) roomAt(now time.Time) room {
	r := room{requests: -1, tokens: 1, mark: -1, quota: -1}
	if l.RemainingRequests >= 0 && (l.ResetRequests.IsZero() || now.Before(l.ResetRequests)) {
		r.requests, r.limit = l.RemainingRequests, l.LimitRequests
		if !l.ResetRequests.IsZero() {
			r.requestsReset = l.ResetRequests.UnixNano()
		}
	}
	if l.RemainingTokens >= 0 && (l.ResetTokens.IsZero() || now.Before(l.ResetTokens)) {
		if !l.ResetTokens.IsZero() {
			r.tokensReset = l.ResetTokens.UnixNano()
		}
		switch {
		case l.LimitTokens > 0:
			r.tokens = math.Max(float64(l.RemainingTokens)/float64(l.LimitTokens), 0)
		case l.RemainingTokens == 0:
			r.tokens = 0
		}
	}
	return r
}

// share is the share of r left for one more call, with taken calls taken
// from the requests left: those the last answer's count does not know of,
// and, with several replicas, beyond this replica's share (see
// routeStats.taken). It reads the clock only for a router whose upstream
// said none is left, to let it take calls again from its reset on.
func (r *room) share(taken int64) float64 {
	h := r.tokens
	if h <= 0 && passed(r.tokensReset) {
		h = 1
	}
	if r.requests >= 0 {
		left := r.requests - taken
		switch {
		case left > 0:
			if r.limit > 0 {
				h = min(h, float64(left)/float64(r.limit)) // the builtin: math.Min is a call
			}
		case r.requests > 0 || !passed(r.requestsReset):
			// None left for this call; only a router its upstream said had
			// none reads the clock, whose reset may have passed since.
			return 0
		}
	}
	return h
}

// passed says whether reset (unix nanoseconds; 0: none said) is past.
func passed(reset int64) bool { return reset != 0 && time.Now().UnixNano() >= reset }

// ErrLatencyOutOfBounds is what Finished gives for an upstream time longer
// than the in-flight bound (Config.InFlightBound, 5 minutes by default):
// no call counts as in flight that long, so such a time is a broken or
// forged timer, and taken as a sample it would keep a latency pool off the
// router for hundreds of samples.
var ErrLatencyOutOfBounds = errors.New("upstream time longer than the in-flight bound; not taken as a latency sample")

// Finished takes a call the fleet finished, as gecholog's transaction log
// tells it: the router used, its upstream's time, and what its rate-limit
// headers said (nil when none). A time longer than the in-flight bound is
// no sample (ErrLatencyOutOfBounds; the rest is still taken), and a reset
// further than the longest disable (DisabledTime × MaxMultiplier, the
// bound of a Retry-After) is taken as that far.
func (b *Broker) Finished(router []byte, latency time.Duration, limits *RateLimits) error {
	t := b.cur()
	rt := t.routers[string(router)]
	if rt == nil {
		return nil
	}
	b.heard.Store(time.Now().UnixNano())
	defer b.stir()
	if old := rt.stats.limits.Load(); limits != nil && limits.Known() &&
		(old == nil || limits.Answered.IsZero() || !old.Answered.After(limits.Answered)) {
		// A transaction heard after one answered later (gecholog publishes
		// each when its response processors are done) is no news of what
		// is left.
		l := *limits
		// Azure OpenAI says what is left but not when it is full again:
		// its quotas are per minute, so a count said without a reset is
		// taken as full again a minute on, unless a newer answer says
		// otherwise. Without this, a router told 0 left would never get
		// another call, and so never another answer to lift it.
		now := time.Now()
		if l.RemainingRequests >= 0 && l.ResetRequests.IsZero() {
			l.ResetRequests = now.Add(unsaidReset)
		}
		if l.RemainingTokens >= 0 && l.ResetTokens.IsZero() {
			l.ResetTokens = now.Add(unsaidReset)
		}
		// A reset is held within what a Retry-After may ask: one upstream
		// answer (or one forged transaction) keeps a router waiting no
		// longer than the longest disable.
		latest := now.Add(t.policy.maxWait())
		if l.ResetRequests.After(latest) {
			l.ResetRequests = latest
		}
		if l.ResetTokens.After(latest) {
			l.ResetTokens = latest
		}
		if old != nil {
			// What a count was measured against when the headers do
			// not say: the most ever left.
			if l.LimitRequests < 0 {
				l.LimitRequests = max(old.LimitRequests, old.RemainingRequests, l.RemainingRequests)
			}
			if l.LimitTokens < 0 {
				l.LimitTokens = max(old.LimitTokens, old.RemainingTokens, l.RemainingTokens)
			}
		}
		// What the strategies read (room) is set before what the view
		// shows (limits), and the latency after both: whoever sees a
		// transaction in the view finds the replica choosing by all of it.
		tl := b.tallied(rt, &l, rt.stats.tally.Load(), now) // takes b.fleet.mu
		b.fleet.mu.Lock()
		rt.stats.tally.Store(tl)
		rt.stats.roomFrom(&l, now)
		rt.stats.limits.Store(&l)
		b.fleet.mu.Unlock()
	}
	switch {
	case latency > t.bound:
		return fmt.Errorf("%w: %v, bound %v", ErrLatencyOutOfBounds, latency, t.bound)
	case latency > 0:
		rt.stats.addLatency(latency)
	}
	return nil
}
