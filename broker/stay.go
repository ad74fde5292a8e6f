package broker

// Where sessions went. Every replica hears every call of the fleet on
// gecholog's transaction log, and each names its session (session_id)
// and the router it used (response.gl_path): so every replica keeps the
// same memory of where each session of a pool with "session" affinity
// went, written only by what it hears, never on the request path. A
// keyed call whose session is remembered goes back to its router while
// that router can take it (see ChooseSession); this pins a conversation's
// first call, which had no session header and went by the pool's
// strategy, and keeps a session that moved where it moved (Affinity.Stay).
//
// Only "session" affinity is remembered: the log names the session at its
// root, but a header a pool names would have to be read from the log's
// request.ingress_headers, which gecholog's masked_headers and the
// logger's fields_exclude may mask or leave out, so its value is not
// reliably there. A pool keyed by a header sends every call, its first
// included, by its session's order (rendezvous), which needs no memory.
//
// A session is remembered under its key's hash, joined with its pool's:
// two sessions whose 64-bit hashes collide share one memory (about one
// pair in 10^10 at the bound), and one forged session id can at worst
// move another session's calls, as a forged header can.

import (
	"sync"
	"sync/atomic"
	"time"
)

// MaxRemembered is how many sessions a replica remembers at most. A
// session heard when the memory is full takes the place of the one least
// recently heard of a few picked at random (so nearly always of one whose
// lifetime is over); such evictions are counted (SessionCounts.Evicted).
const MaxRemembered = 100_000

// DefaultSessionTTL is how long a session is remembered after its last
// call was heard when its pool says nothing: about the providers' prompt
// cache lifetime (5 to 10 minutes of inactivity), after which a
// conversation gains nothing from its router.
const DefaultSessionTTL = 10 * time.Minute

// SessionTTLRange is the lifetimes a pool may give its sessions.
var SessionTTLRange = Range[time.Duration]{Min: time.Second, Max: 24 * time.Hour}

const (
	memShards   = 64 // a power of two
	memPerShard = MaxRemembered / memShards
	memSample   = 8 // entries looked at to pick one to evict
)

// memEntry is one session remembered. home is where its calls go back
// to: the first router heard, or with Affinity.Stay the last; last is
// the router its last call used. until is when it is forgotten, in
// nanoseconds of the memory's clock.
type memEntry struct {
	home, last *route
	until      int64
}

type memShard struct {
	mu sync.RWMutex
	m  map[uint64]memEntry
	_  [64]byte // keep shards off each other's cache lines
}

// sessionMemory is a replica's memory of where sessions went. Written by
// the transaction log's reader, read by every call; lookups take a read
// lock of one of memShards shards, allocate nothing and read no clock (a
// clock read costs more than the rest of a lookup on some machines): they
// read clock, which Remember and Refresh (every few milliseconds in a
// replica) move.
type sessionMemory struct {
	start      time.Time    // the clock: monotonic nanoseconds since start
	clock      atomic.Int64 // the clock as last read
	shards     [memShards]memShard
	remembered atomic.Uint64 // keyed calls sent to their session's remembered router
	evicted    atomic.Uint64 // sessions forgotten before their time, to keep the bound
	swept      atomic.Uint64 // the shards swept (see sweep)
}

func (m *sessionMemory) init() {
	m.start = time.Now()
	for i := range m.shards {
		m.shards[i].m = map[uint64]memEntry{}
	}
}

// now reads the memory's clock, which never runs backwards.
func (m *sessionMemory) now() int64 {
	now := int64(time.Since(m.start))
	m.clock.Store(now)
	return now
}

func (m *sessionMemory) shard(k uint64) *memShard { return &m.shards[k>>58&(memShards-1)] }

// home is where the session k goes back to; nil when it is not
// remembered or its lifetime is over.
func (m *sessionMemory) home(k uint64) *route {
	s := m.shard(k)
	s.mu.RLock()
	e, ok := s.m[k]
	s.mu.RUnlock()
	if !ok || m.clock.Load() >= e.until {
		return nil
	}
	return e.home
}

// hear takes a call of the session k on rt, heard at now: the session is
// remembered until now+ttl. A session whose last call was on another
// router moved, and is counted on both. Each router counts the sessions
// whose last call it took (route.stats.pinned), for the sessions strategy.
func (m *sessionMemory) hear(k uint64, rt *route, stay bool, now int64, ttl time.Duration) {
	s := m.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.m[k]
	switch {
	case !ok || now >= e.until:
		if ok {
			e.last.stats.pinned.Add(-1) // over: a new session of the same key
		} else if len(s.m) >= memPerShard {
			m.evict(s, now)
		}
		e = memEntry{home: rt, last: rt}
		rt.stats.pinned.Add(1)
	case e.last != rt:
		e.last.stats.sessionsOut.Add(1)
		e.last.stats.pinned.Add(-1)
		rt.stats.sessionsIn.Add(1)
		rt.stats.pinned.Add(1)
		e.last = rt
		if stay {
			e.home = rt
		}
	}
	e.until = now + int64(ttl)
	s.m[k] = e
}

// evict forgets one session of s, which is full: of a few picked at
// random (a map's order starts anywhere), the one forgotten soonest.
// s.mu must be held.
func (m *sessionMemory) evict(s *memShard, now int64) {
	var victim uint64
	var gone memEntry
	n := 0
	for k, e := range s.m {
		if n == 0 || e.until < gone.until {
			victim, gone = k, e
		}
		if n++; n == memSample {
			break
		}
	}
	if n == 0 {
		return
	}
	delete(s.m, victim)
	gone.last.stats.pinned.Add(-1)
	if gone.until > now {
		m.evicted.Add(1)
	}
}

// sweep forgets the sessions of one shard whose lifetime is over, the
// next shard at each call: a replica sweeps one at every Refresh, so the
// whole memory every memShards refreshes (under a second), holding one
// shard's lock for a pass over at most memPerShard sessions.
func (m *sessionMemory) sweep(now int64) {
	m.sweepShard(&m.shards[m.swept.Add(1)&(memShards-1)], now)
}

func (m *sessionMemory) sweepShard(s *memShard, now int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, e := range s.m {
		if now >= e.until {
			delete(s.m, k)
			e.last.stats.pinned.Add(-1)
		}
	}
}

// Remember takes a call of the gecholog session key (the first three
// parts of its session_id) that used router, as heard on gecholog's
// transaction log: every pool with "session" affinity that has router
// remembers that the session went there (see sessionMemory). A router
// no such pool has, and an empty key or one longer than MaxSessionKey,
// are ignored.
func (b *Broker) Remember(key, router []byte) {
	if len(key) == 0 || len(key) > MaxSessionKey {
		return
	}
	t := b.cur()
	pools := t.remember[string(router)]
	if len(pools) == 0 {
		return
	}
	rt := t.routers[string(router)]
	h := sessionHash(key)
	now := b.memory.now()
	for _, p := range pools {
		b.memory.hear(h^p.seed, rt, p.affinity.Stay, now, p.ttl())
	}
}

// ttl is how long p remembers a session after its last call.
func (p *pool) ttl() time.Duration {
	if d := p.affinity.TTL; d != 0 {
		return d
	}
	return DefaultSessionTTL
}

// SessionRouter is what the memory of sessions says of one router.
type SessionRouter struct {
	Router string
	// Pinned is how many sessions remembered, and within their lifetime,
	// last used the router (a session of two pools with the router counts
	// twice).
	Pinned int
	// MovedIn and MovedOut count the sessions heard on the router whose
	// call before was on another router, and those heard on another
	// router whose call before was on this one, since the replica
	// started.
	MovedIn, MovedOut uint64
}

// SessionRouters returns, for every router of the pools in force, the
// sessions pinned to it and the moves, in the order the pools first list
// the routers. It first forgets every session whose lifetime is over (a
// pass over the whole memory): call it for a report, not per call.
func (b *Broker) SessionRouters() []SessionRouter {
	t := b.cur()
	now := b.memory.now()
	for i := range b.memory.shards {
		b.memory.sweepShard(&b.memory.shards[i], now)
	}
	out := make([]SessionRouter, 0, len(t.members))
	for _, rt := range t.members {
		out = append(out, SessionRouter{Router: rt.path, Pinned: int(rt.stats.pinned.Load()),
			MovedIn: rt.stats.sessionsIn.Load(), MovedOut: rt.stats.sessionsOut.Load()})
	}
	return out
}

// indexOf returns the index in t of rt, or -1 when t has no rt.
func (t *Tier) indexOf(rt *route) int {
	for j, r := range t.routes {
		if r == rt {
			return j
		}
	}
	return -1
}

// takes reports whether router j of t can take a keyed call: it has rate
// limit left and is within its bound of the calls in flight (the bound
// Tier.affine applies).
func (t *Tier) takes(j int, factor float64) bool {
	f := t.InFlight(j)
	if !t.routes[j].stats.hasRoom(f) {
		return false
	}
	if f < affinityFloor {
		return true // within any bound: the tier's sum is not needed
	}
	var inFlight, weight int64
	for k, rt := range t.routes {
		if g := rt.stats.inFlight(); rt.stats.hasRoom(g) {
			inFlight += g
			weight += int64(t.weights[k])
		}
	}
	return within(f, inFlight, int64(t.weights[j]), weight, factor)
}
