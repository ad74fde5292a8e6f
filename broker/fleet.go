package broker

import (
	"slices"
	"sync"
	"time"
)

// The statistics the strategies read are the whole fleet's. Each replica
// counts the calls it chooses and the reports it hears, per router, over a
// sliding window (Counts), and shares them with the others, which merge
// them (Merge); the replica package publishes them on a NATS subject when
// they change, and at least every heartbeat (one silent for Silence of
// it is forgotten). Latency and rate-limit headroom come from gecholog's
// transaction log, which every replica hears, read or told (Finished). Reading
// them on a call is a few atomic loads; Refresh folds what was merged into
// those atomics.

// Counts is what a replica tells the others of one router.
type Counts struct {
	Router string
	// Chosen and Reported are the calls it chose and the reports it heard
	// within the in-flight bound.
	Chosen, Reported int64
	// Calls and Failures are the reports it heard, and the failures among
	// them, within the failure-rate window.
	Calls, Failures int64
	// LastSuccess is the last success it heard reported (zero: none), and
	// Failing the failures it heard since, oldest first, at most
	// MaxFailing.
	LastSuccess time.Time
	Failing     []time.Time
	// Latency and Headroom are what this replica knows of the router's
	// upstream from the transaction log (zero, and HeadroomKnown false,
	// when nothing): the same on every replica, which all hear the log, so
	// the others ignore them. They are told for operators (broker status).
	Latency       time.Duration
	Headroom      float64
	HeadroomKnown bool
	// RateLimitedUntil is when the router, its upstream said, has a
	// request or token again (zero: it is not waiting), for operators.
	RateLimitedUntil time.Time
}

// MaxFailing bounds the failures a replica tells since its last success:
// a threshold above it counts at most this many from each replica.
const MaxFailing = 64

// Equal reports whether c and d say the same counts; latency and headroom
// are not compared: they change with every call, and ride along with the
// counts when those are told.
func (c Counts) Equal(d Counts) bool {
	return c.Router == d.Router && c.Chosen == d.Chosen && c.Reported == d.Reported && c.Calls == d.Calls &&
		c.Failures == d.Failures && c.LastSuccess.Equal(d.LastSuccess) && slices.EqualFunc(c.Failing, d.Failing, time.Time.Equal)
}

// latencyWeight is how much one sample moves the average.
const latencyWeight = 0.2

// fleet is the other replicas' counts, merged.
type fleet struct {
	bound time.Duration
	mu    sync.Mutex
	peers map[string]peer // by replica
	// told is the sum of the peers' in-flight counts per router, kept as
	// they change, so that a word costs its own routers and not every
	// peer's (setBase).
	told   map[string]inFlight
	nudged chan struct{} // see Nudged
}

// inFlight is calls chosen and reports heard within the in-flight bound.
type inFlight struct{ chosen, reported int64 }

// shift moves the sums of router path by chosen and reported.
func (f *fleet) shift(path string, chosen, reported int64) {
	t := f.told[path]
	t.chosen += chosen
	t.reported += reported
	if t == (inFlight{}) {
		delete(f.told, path)
	} else {
		f.told[path] = t
	}
}

// drop forgets the peer id. f.mu must be held.
func (f *fleet) drop(id string) {
	for path, c := range f.peers[id].counts {
		f.shift(path, -c.Chosen, -c.Reported)
	}
	delete(f.peers, id)
}

type peer struct {
	at      time.Time         // by this replica's clock
	told    time.Time         // by the teller's (zero: not said)
	silence time.Duration     // how long its counts stand (Silence)
	counts  map[string]Counts // by router
}

// PeerSilence is how long a replica's last counts stand without a new
// word when it tells a heartbeat every second: one silent for three has
// stopped (its calls are reported to the others, or time out).
const PeerSilence = 3 * time.Second

// MaxHeartbeat bounds the time between two heartbeats a replica says it
// keeps (the replica package spaces them as the fleet grows, so that each
// replica hears a bounded number a second): one telling more is held to
// it, so that a forged word stands no longer than 3 × MaxHeartbeat.
const MaxHeartbeat = 10 * time.Second

// Silence is how long the last word of a replica that tells a heartbeat
// every every stands: three heartbeats, and at least PeerSilence (every
// 0 or less: a second, as a replica that does not say).
func Silence(every time.Duration) time.Duration {
	return max(PeerSilence, 3*min(every, MaxHeartbeat))
}

// Counts returns what this replica tells the others, as of the last
// Refresh: every router it chose or heard a report of within the bound.
func (b *Broker) Counts() []Counts {
	b.fleet.mu.Lock()
	defer b.fleet.mu.Unlock()
	var out []Counts
	for _, rt := range b.cur().members {
		s := &rt.stats
		c := Counts{Router: rt.path, Chosen: s.chosen.count(s.chosen.total.Load()), Reported: s.reported.count(s.reported.total.Load()),
			Calls: s.calls.count(s.calls.total.Load()), Failures: s.failures.count(s.failures.total.Load())}
		if ns := s.lastSuccess.Load(); ns != 0 {
			c.LastSuccess = time.Unix(0, ns)
		}
		c.Failing = slices.Clone(s.failing)
		c.Latency, _ = s.latency()
		now := time.Now()
		c.Headroom, c.HeadroomKnown = s.headroom(now)
		c.RateLimitedUntil = s.waitsUntil(now)
		if c.Chosen != 0 || c.Reported != 0 || c.Calls != 0 || len(c.Failing) > 0 || c.Latency != 0 || c.HeadroomKnown {
			out = append(out, c)
		}
	}
	return out
}

// Refresh slides this replica's windows to now, forgets replicas silent
// for PeerSilence, and sets what the strategies read. It disables a router
// whose failures, this replica's newest among them, reach the threshold
// only with those the others told of since. The replica calls it before
// it tells its counts, every few milliseconds while calls come (Quiet).
func (b *Broker) Refresh(now time.Time) {
	b.memory.sweep(b.memory.now()) // moves the clock the memory of sessions reads
	for _, late := range b.refreshFleet(now) {
		b.report(late.rt, late.ev)
	}
	t := b.cur()
	for _, rt := range t.members {
		b.checkBudget(rt, now) // a period over, or calls in flight that spend it
	}
	for _, ingress := range t.order {
		b.checkPoolBudget(t.pools[ingress], now) // likewise
	}
	b.priceCalls()
}

// lateFailure is a failure that, with the failures the other replicas
// told of since, makes the fleet's count reach the threshold.
type lateFailure struct {
	rt *route
	ev event
}

func (b *Broker) refreshFleet(now time.Time) (late []lateFailure) {
	b.fleet.mu.Lock()
	defer b.fleet.mu.Unlock()
	for id, p := range b.fleet.peers {
		if now.Sub(p.at) > p.silence {
			b.fleet.drop(id)
		}
	}
	t := b.cur()
	for _, rt := range t.members {
		s := &rt.stats
		s.calls.advance(now, s.calls.total.Load())
		s.failures.advance(now, s.failures.total.Load())
		s.chosen.advance(now, s.chosen.total.Load())
		s.reported.advance(now, s.reported.total.Load())
		b.setBase(rt)
		// Failures reported to two replicas at once, or to one that had
		// not yet heard the others, each count short of the threshold
		// when reported; told to each other, they reach it. The replica
		// that heard the newest of them disables the router, so that one
		// does, once.
		if n := len(b.failing(rt)); n >= t.policy.Threshold && !s.newest.acted && s.failing[n-1].Equal(s.newest.at) {
			s.newest.acted = true
			late = append(late, lateFailure{rt, event{kind: failure, status: s.newest.status,
				retryAfter: s.newest.retryAfter, failures: n}})
		}
		s.setRoom(now)
	}
	return late
}

// setBase sets what rt's calls in flight count from: the fleet's choices
// minus its reports within the bound, by this replica's windows and what
// the others last told. A call chosen or reported here from now on adds
// to it at once. b.fleet.mu must be held.
func (b *Broker) setBase(rt *route) {
	s := &rt.stats
	ct, rtot := s.chosen.total.Load(), s.reported.total.Load()
	told := b.fleet.told[rt.path]
	c, r := s.chosen.count(ct)+told.chosen, s.reported.count(rtot)+told.reported
	s.base.Store(c - r)
	s.chosenMark.Store(ct)
	s.reportedMark.Store(rtot)
	s.fleetChosen.Store(c)
}

// counted adds a report of rt to this replica's counts, and for a failure
// returns the fleet's consecutive failures of it, this one included, and
// the failure-rate rule's figures when that rule fires.
func (b *Broker) counted(rt *route, failed bool, now time.Time, status int, retryAfter time.Duration) (failures int, rate *rateFigures) {
	s := &rt.stats
	s.reported.add(1)
	s.calls.add(1)
	b.stir()
	if !failed {
		s.lastSuccess.Store(now.UnixNano())
		if s.failingLen.Load() > 0 || b.othersFailing(rt) {
			// The fleet's count ends here: told at once, not at the next
			// tick (100 ms for a pool that does not read calls in flight),
			// or another replica's next failure would count on past it.
			b.nudge()
		}
		return 0, nil
	}
	s.failures.add(1)
	defer b.nudge()
	b.fleet.mu.Lock()
	defer b.fleet.mu.Unlock()
	s.failing = append(s.failing, now)
	s.failingLen.Store(int32(len(s.failing)))
	s.newest = newestFailure{at: now, status: status, retryAfter: retryAfter}
	failures = len(b.failing(rt))
	calls, failed64 := s.calls.count(s.calls.total.Load()), s.failures.count(s.failures.total.Load())
	for _, p := range b.fleet.peers {
		pc := p.counts[rt.path]
		calls += pc.Calls
		failed64 += pc.Failures
	}
	pol := &b.cur().policy
	if pol.Rate > 0 && failures < pol.Threshold && calls >= int64(pol.RateMinCalls) && float64(failed64)*100 >= pol.Rate*float64(calls) {
		rate = &rateFigures{failures: failed64, calls: calls, window: pol.RateWindow}
	}
	s.newest.acted = failures >= pol.Threshold || rate != nil
	return failures, rate
}

// othersFailing says whether another replica told of failures of rt that
// no success it knows of has ended.
func (b *Broker) othersFailing(rt *route) bool {
	b.fleet.mu.Lock()
	defer b.fleet.mu.Unlock()
	for _, p := range b.fleet.peers {
		if pc, ok := p.counts[rt.path]; ok && len(pc.Failing) > 0 {
			return true
		}
	}
	return false
}

// failing gathers the fleet's failures of rt since the fleet's last success
// of it into rt's own list, oldest first, and returns it. Every replica
// tells the failures it knows of, its own and the others', and the last
// success any heard, so that a count outlives the replica that heard it.
// b.fleet.mu must be held.
func (b *Broker) failing(rt *route) []time.Time {
	s := &rt.stats
	last := s.lastSuccess.Load()
	for _, p := range b.fleet.peers {
		if pc, ok := p.counts[rt.path]; ok && pc.LastSuccess.UnixNano() > last {
			last = pc.LastSuccess.UnixNano()
		}
	}
	for cur := s.lastSuccess.Load(); cur < last && !s.lastSuccess.CompareAndSwap(cur, last); cur = s.lastSuccess.Load() {
	}
	all := s.failing
	for _, p := range b.fleet.peers {
		all = append(all, p.counts[rt.path].Failing...)
	}
	all = slices.DeleteFunc(all, func(t time.Time) bool { return t.UnixNano() <= last })
	slices.SortFunc(all, time.Time.Compare)
	all = slices.CompactFunc(all, time.Time.Equal)
	if len(all) > MaxFailing {
		// Down to the front, so that the list's capacity is reused: a
		// failure storm appends without allocating.
		all = all[:copy(all, all[len(all)-MaxFailing:])]
	}
	s.failing = all
	s.failingLen.Store(int32(len(s.failing)))
	return s.failing
}

// nudge tells the replica that something the others should hear at once
// rather than at the next tick changed: a failure, a success that ends
// failures, or a change its view took from the bucket. It never blocks.
func (b *Broker) nudge() {
	select {
	case b.fleet.nudged <- struct{}{}:
	default:
	}
}

// Nudged receives when this replica's counts changed in a way the other
// replicas should hear at once: a failure reported, or a success that
// ends a run of failures; or when its view took a change from the bucket
// (Taken). The replica tells its counts then, so that a failure reported
// to one replica adds to the count on the next within a round trip, as a
// write to the bucket did, and `broker disable` hears within milliseconds
// which replicas hold its write rather than at their next heartbeat.
func (b *Broker) Nudged() <-chan struct{} { return b.fleet.nudged }

// consecutive is the fleet's consecutive failures of rt as this replica
// last heard from every replica.
func (b *Broker) consecutive(rt *route) int {
	b.fleet.mu.Lock()
	defer b.fleet.mu.Unlock()
	return len(b.failing(rt))
}

// rate is rt's failures and calls within the failure-rate window, over the
// fleet, as of the last Refresh.
func (b *Broker) rate(rt *route) (failures, calls int64) {
	b.fleet.mu.Lock()
	defer b.fleet.mu.Unlock()
	s := &rt.stats
	calls, failures = s.calls.count(s.calls.total.Load()), s.failures.count(s.failures.total.Load())
	for _, p := range b.fleet.peers {
		pc := p.counts[rt.path]
		calls += pc.Calls
		failures += pc.Failures
	}
	return failures, calls
}
