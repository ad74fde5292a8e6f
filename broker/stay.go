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

// Remember takes a call of the gecholog session key (the first three
// parts of its session_id) that used router, as heard on gecholog's
// transaction log: every pool with "session" affinity that has router
// remembers that the session went there (see sessionMemory). A router
// no such pool has, and an empty key or one longer than MaxSessionKey,
// are ignored.
func (b *Broker) Remember(key, router []byte) {
	if h, ok := SessionHash(key); ok {
		b.RememberHash(h, router, time.Time{})
	}
}

// SessionHash is what the memory of sessions keeps of a key: the same in
// every replica, so that one that read a call's transaction can tell the
// others where its session went without telling them its key. ok is
// false for no key: empty, or longer than MaxSessionKey.
func SessionHash(key []byte) (h uint64, ok bool) {
	if len(key) == 0 || len(key) > MaxSessionKey {
		return 0, false
	}
	return sessionHash(key), true
}

// RememberHash is Remember of the key whose SessionHash is h, for a call
// that began at began by gecholog's clock (zero: not said). A call that
// began before the last one heard of the session is older news: it moves
// the session nowhere (see sessionMemory.hear).
func (b *Broker) RememberHash(h uint64, router []byte, began time.Time) {
	t := b.cur()
	pools := t.remember[string(router)]
	if len(pools) == 0 {
		return
	}
	rt := t.routers[string(router)]
	now := b.memory.now()
	var at int64
	if !began.IsZero() {
		at = began.UnixNano()
	}
	for _, p := range pools {
		b.memory.hear(h^p.seed, rt, p.affinity.Stay, at, now, p.ttl())
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
	if !t.routes[j].stats.hasRoom() {
		return false
	}
	if f < affinityFloor {
		return true // within any bound: the tier's sum is not needed
	}
	var inFlight, weight int64
	for k, rt := range t.routes {
		if g := rt.stats.inFlight(); rt.stats.hasRoom() {
			inFlight += g
			weight += int64(t.weights[k])
		}
	}
	return within(f, inFlight, int64(t.weights[j]), weight, factor)
}
