package broker

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// The memory of sessions (see stay.go) as a table every call reads
// without a lock: each shard is an open-addressed table of atomic slots,
// written under the shard's lock by the transaction log's reader (hear),
// the sweep and eviction, and read by calls with a few atomic loads. A
// slot's key goes from empty to a session's key, and from that to gone,
// never to another key, so a call that found its key reads that
// session's home (or a newer one of it); gone slots are reclaimed only by
// building a new table, which is swapped in whole: a call reads the table
// it loaded, consistent, at worst a little old.

const (
	memShards   = 64 // a power of two
	memPerShard = MaxRemembered / memShards
	memSample   = 8 // sessions looked at to pick one to evict

	memMinSlots = 16   // a shard's first table
	memMaxSlots = 4096 // a power of two: memPerShard at most 38% full, with room for gone slots

	memEmpty = 0 // a slot's key: never used
	memGone  = 1 // a slot's key: forgotten; a probe steps over it
)

// memSlot is one session remembered. home is where its calls go back
// to: the first router heard, or with Affinity.Stay the last; last is
// the router its last call used. until is when it is forgotten, in
// nanoseconds of the memory's clock.
type memSlot struct {
	key   atomic.Uint64 // memEmpty, memGone or a session's key (keyOf)
	until atomic.Int64
	home  atomic.Pointer[route]
	last  *route // the shard's lock
	began int64  // when the call on last began, by gecholog's clock (0: not said); the shard's lock
	homed int64  // when the call that made home home began, likewise
}

type memTable struct{ slots []memSlot } // len a power of two

type memShard struct {
	mu    sync.Mutex // writers
	table atomic.Pointer[memTable]
	live  int      // slots with a key; the lock
	gone  int      // slots gone; the lock
	_     [64]byte // keep shards off each other's cache lines
}

// sessionMemory is a replica's memory of where sessions went. Written by
// the transaction log's reader, read by every call; lookups take no lock,
// allocate nothing and read no clock (a clock read costs more than the
// rest of a lookup on some machines): they read clock, which Remember and
// Refresh (every few milliseconds in a replica) move.
type sessionMemory struct {
	start      time.Time    // the clock: monotonic nanoseconds since start
	clock      atomic.Int64 // the clock as last read
	shards     [memShards]memShard
	remembered atomic.Uint64 // keyed calls sent to their session's remembered router
	evicted    atomic.Uint64 // sessions forgotten before their time, to keep the bound
	swept      atomic.Uint64 // the shards swept (see sweep)
}

func (m *sessionMemory) init() { m.start = time.Now() }

// now reads the memory's clock, which never runs backwards.
func (m *sessionMemory) now() int64 {
	now := int64(time.Since(m.start))
	m.clock.Store(now)
	return now
}

// keyOf is the key of session k in a slot: k, but for the two keys the
// slots keep for themselves (one session in 2^63 shares its slot's key
// with another, as two sessions whose hashes collide do).
func keyOf(k uint64) uint64 { return max(k, memGone+1) }

func (m *sessionMemory) shard(k uint64) *memShard { return &m.shards[k>>58&(memShards-1)] }

// find returns the slot of key in t, or nil.
func (t *memTable) find(key uint64) *memSlot {
	mask := uint64(len(t.slots) - 1)
	for i, n := key&mask, 0; n < len(t.slots); i, n = (i+1)&mask, n+1 {
		s := &t.slots[i]
		switch s.key.Load() {
		case key:
			return s
		case memEmpty:
			return nil
		}
	}
	return nil
}

// home is where the session k goes back to; nil when it is not
// remembered or its lifetime is over.
func (m *sessionMemory) home(k uint64) *route {
	t := m.shard(k).table.Load()
	if t == nil {
		return nil
	}
	s := t.find(keyOf(k))
	if s == nil || m.clock.Load() >= s.until.Load() {
		return nil
	}
	return s.home.Load()
}

// hear takes a call of the session k on rt, which began at began by
// gecholog's clock (0: not said), heard at now: the session is remembered
// until now+ttl. A session whose last call was on another router moved,
// and is counted on both; but a call that began before the last one heard
// is older news (the replicas hear calls read by another replica a few
// milliseconds late), and moves nothing, so that every replica remembers
// the same router whatever order it heard them in. Each router counts the
// sessions whose last call it took (route.stats.pinned), for the
// sessions strategy.
func (m *sessionMemory) hear(k uint64, rt *route, stay bool, began, now int64, ttl time.Duration) {
	sh := m.shard(k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	key := keyOf(k)
	until := now + int64(ttl)
	if t := sh.table.Load(); t != nil {
		if s := t.find(key); s != nil {
			switch {
			case now >= s.until.Load(): // over: a new session of the same key
				s.last.stats.pinned.Add(-1)
				rt.stats.pinned.Add(1)
				s.last, s.began, s.homed = rt, began, began
				s.home.Store(rt)
			case began != 0 && began < s.began:
				// Older news: the session was last on s.last; but its home,
				// unless the pool says sessions stay where they move, is
				// where its first call went.
				if !stay && began < s.homed {
					s.home.Store(rt)
					s.homed = began
				}
			case s.last != rt:
				s.last.stats.sessionsOut.Add(1)
				s.last.stats.pinned.Add(-1)
				rt.stats.sessionsIn.Add(1)
				rt.stats.pinned.Add(1)
				s.last, s.began = rt, max(s.began, began)
				if stay {
					s.home.Store(rt)
					s.homed = began
				}
			default:
				s.began = max(s.began, began)
			}
			s.until.Store(until)
			return
		}
	}
	if sh.live >= memPerShard {
		m.evict(sh, now)
	}
	t := sh.table.Load()
	if t == nil || 4*(sh.live+sh.gone+1) > 3*len(t.slots) {
		t = sh.rebuild()
	}
	s := t.empty(key)
	s.last, s.began, s.homed = rt, began, began
	s.home.Store(rt)
	s.until.Store(until)
	s.key.Store(key) // last: a call that finds the key finds the rest
	sh.live++
	rt.stats.pinned.Add(1)
}

// empty returns the empty slot where key goes in t, which has one.
func (t *memTable) empty(key uint64) *memSlot {
	mask := uint64(len(t.slots) - 1)
	i := key & mask
	for t.slots[i].key.Load() != memEmpty {
		i = (i + 1) & mask
	}
	return &t.slots[i]
}

// rebuild swaps in a new table of the shard's sessions, without its gone
// slots, sized for one more: at most half full. sh.mu must be held.
func (sh *memShard) rebuild() *memTable {
	n := memMinSlots
	for n < memMaxSlots && n < 2*(sh.live+1) {
		n *= 2
	}
	t := &memTable{slots: make([]memSlot, n)}
	if old := sh.table.Load(); old != nil {
		for i := range old.slots {
			o := &old.slots[i]
			if key := o.key.Load(); key > memGone {
				s := t.empty(key)
				s.last, s.began, s.homed = o.last, o.began, o.homed
				s.home.Store(o.home.Load())
				s.until.Store(o.until.Load())
				s.key.Store(key)
			}
		}
	}
	sh.gone = 0
	sh.table.Store(t)
	return t
}

// forget makes s, a live slot of sh, gone. sh.mu must be held.
func (sh *memShard) forget(s *memSlot) {
	s.key.Store(memGone)
	s.last.stats.pinned.Add(-1)
	s.last = nil
	sh.live--
	sh.gone++
}

// evict forgets one session of sh, which is full: of a few looked at from
// a slot at random, the one forgotten soonest. sh.mu must be held.
func (m *sessionMemory) evict(sh *memShard, now int64) {
	t := sh.table.Load()
	if t == nil {
		return
	}
	var victim *memSlot
	mask := len(t.slots) - 1
	for i, seen, n := rand.IntN(len(t.slots)), 0, 0; seen < memSample && n < len(t.slots); i, n = (i+1)&mask, n+1 {
		s := &t.slots[i]
		if s.key.Load() <= memGone {
			continue
		}
		seen++
		if victim == nil || s.until.Load() < victim.until.Load() {
			victim = s
		}
	}
	if victim == nil {
		return
	}
	if victim.until.Load() > now {
		m.evicted.Add(1)
	}
	sh.forget(victim)
}

// sweep forgets the sessions of one shard whose lifetime is over, the
// next shard at each call: a replica sweeps one at every Refresh, so the
// whole memory every memShards refreshes (under a second), holding one
// shard's lock for a pass over at most memMaxSlots slots.
func (m *sessionMemory) sweep(now int64) {
	m.sweepShard(&m.shards[m.swept.Add(1)&(memShards-1)], now)
}

func (m *sessionMemory) sweepShard(sh *memShard, now int64) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	t := sh.table.Load()
	if t == nil {
		return
	}
	for i := range t.slots {
		if s := &t.slots[i]; s.key.Load() > memGone && now >= s.until.Load() {
			sh.forget(s)
		}
	}
	if sh.gone > len(t.slots)/4 {
		sh.rebuild() // reclaims the gone slots, and shrinks a table left mostly empty
	}
}
