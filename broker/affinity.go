package broker

// Session affinity: the calls of one conversation go to one router, the
// same from every replica, with no write on the request path. Each
// router of a tier gets a score from the session's key and its own path
// (weighted rendezvous hashing, "highest random weight"); the session's
// order is the routers by score. The key and the paths are all a choice
// reads, so every replica that sees the same tier makes the same choice.
// When a router leaves the tier (disabled, or on probation), only the
// sessions it ranked first move, each to its own next; when it returns,
// they come back. A router holding more than its bound of the tier's
// calls in flight (consistent hashing with bounded loads, Mirrokni,
// Thorup and Zadimoghaddam 2018) is passed over for the next in the
// session's order, so a few heavy conversations cannot pile onto one
// router. docs/affinity-plan.md says what is left.

import (
	"errors"
	"fmt"
	"math"
	"sync/atomic"
	"time"
)

// Affinity says how a pool keeps a conversation on one router. The zero
// value is none: every call is the pool's strategy's.
type Affinity struct {
	// Session keys a call by gecholog's session: the request's session
	// header (gecholog's session_id_header), whose id is
	// GATEWAYID_UNIXNANO_COUNT_TRANSACTION; its first three parts name
	// the session. The gecholog package reads it.
	Session bool
	// Header keys a call by the whole value of the request header it
	// names (matched in any case), such as X-Conversation-Id.
	Header string
	// LoadFactor bounds a router's calls in flight to this many times
	// its weight's share of its tier's (0: DefaultLoadFactor).
	LoadFactor float64
	// TTL is how long a session is remembered after its last call was
	// heard (0: DefaultSessionTTL); "session" affinity only (see
	// sessionMemory).
	TTL time.Duration
	// Stay keeps a session that moved (its router was out, or over its
	// bound) on the router it moved to, even when its first router, or a
	// better tier, can take it again. Without it a session goes back to
	// the router it was first heard on, or to a better tier when one
	// returns. "session" affinity only.
	Stay bool
}

// On reports whether a has the pool key calls by session.
func (a Affinity) On() bool { return a.Session || a.Header != "" }

// DefaultLoadFactor is how many times its weight's share of the tier's
// calls in flight a router may hold before a session's next call passes
// it over: 2. Lower bounds the load tighter and moves more sessions
// under random swings of load, which a few dozen calls in flight make
// large: at 30 over 3 routers, 1.25 passes over a session's router on
// about one call in six, 1.5 on one in fifty (binomial tails), and
// broker-bench -mode affinity measured 98.2% of calls on their session's
// router with 1.5 and 99.8% with 2 (docs/performance.md).
const DefaultLoadFactor = 2.0

// LoadFactorRange is the load factors a pool may give.
var LoadFactorRange = Range[float64]{Min: 1.1, Max: 10}

// affinityFloor is the calls in flight under which a router is never
// over its bound: with few calls in flight the shares are noise, and a
// router with a handful of calls is not overloaded whatever the others
// hold.
const affinityFloor = 8

// affinitySlack is the standard deviations of noise a router's calls in
// flight may show over factor × its share before the bound passes it
// over: a router's share of a few dozen calls swings by about the square
// root of its expected count (a Poisson count), and the replicas' views
// of the fleet's calls in flight lag by up to a tell, which counts calls
// answered on another replica as still in flight. Without it, a
// session's router was passed over at a load of one call (a test's
// sequential sessions through two replicas), and in the bench 2 of 479
// sessions moved by the bound alone; with it the bound is
// factor × share + 3 √share, within 1.3 × factor × share from 90 calls
// of share on.
const affinitySlack = 3

// affinityBound is the calls in flight a router of weight w may hold
// before a session's call passes it over, when its tier of weight W
// holds inFlight: factor × its share of them and this call, plus the
// noise's slack, and at least affinityFloor.
func affinityBound(inFlight, w, W int64, factor float64) float64 {
	share := float64(inFlight+1) * float64(w) / float64(W)
	return max(math.Ceil(factor*share+affinitySlack*math.Sqrt(share)), affinityFloor)
}

// maxAffine is how many of a session's order the bound looks at: when
// the first maxAffine are all over their bound, the least busy of them
// takes the call.
const maxAffine = 8

// MaxSessionKey is the longest key a call is keyed by, in bytes: a longer
// one is no session (counted), so that a hostile header costs bounded time.
const MaxSessionKey = 256

// validate checks a's header name and load factor.
func (a Affinity) validate() error {
	if a.Session && a.Header != "" {
		return errors.New(`affinity: give "session" or a header, not both`)
	}
	if a.Header != "" && !headerName(a.Header) {
		return fmt.Errorf("affinity: header %q: a header name is 1 to 64 letters, digits and -", a.Header)
	}
	if a.LoadFactor != 0 && !LoadFactorRange.Contains(a.LoadFactor) {
		return fmt.Errorf("affinity: load factor %v: must be %v", a.LoadFactor, LoadFactorRange)
	}
	if !a.On() && a.LoadFactor != 0 {
		return errors.New(`affinity: a load factor without "session" or a header`)
	}
	if a.TTL != 0 && !SessionTTLRange.Contains(a.TTL) {
		return fmt.Errorf("affinity: ttl %v: must be %v", a.TTL, SessionTTLRange)
	}
	if !a.Session && (a.TTL != 0 || a.Stay) {
		return errors.New(`affinity: "ttl" and "stay" apply to "session" affinity only: the broker learns where a session went from gecholog's transaction log, which names gecholog's session but not reliably a header's value (gecholog may mask or leave out headers there); with a header, every call goes by its session's order`)
	}
	return nil
}

// headerName reports whether h is a header name the broker matches:
// letters, digits and '-', which every header of the LLM APIs is.
func headerName(h string) bool {
	if len(h) == 0 || len(h) > 64 {
		return false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// SessionCounts are the calls of pools with affinity, by what became of
// their key.
type SessionCounts struct {
	// Keyed went to a router by their session's order; Spilled of those
	// passed over their session's first router of the tier, because it
	// was over its bound or its upstream had no rate limit left.
	Keyed, Spilled uint64
	// NoKey had no key (the first call of a conversation, a header left
	// out, empty, malformed or longer than MaxSessionKey) and went by the
	// pool's strategy.
	NoKey uint64
	// Remembered of the keyed calls went to the router the transaction
	// log said their session used (see Remember), not by its order.
	Remembered uint64
	// Evicted counts sessions forgotten before their lifetime was over,
	// because MaxRemembered were remembered.
	Evicted uint64
}

// sessionCounts count the calls of pools with affinity: byOrder the keyed
// calls sent by their session's order (the others by the memory of
// sessions, which counts them), so that a call adds to one counter.
type sessionCounts struct{ byOrder, spilled, noKey atomic.Uint64 }

// Sessions returns the calls of pools with affinity, by what became of
// their key, since the replica started.
func (b *Broker) Sessions() SessionCounts {
	remembered := b.memory.remembered.Load()
	return SessionCounts{Keyed: b.sessions.byOrder.Load() + remembered, Spilled: b.sessions.spilled.Load(), NoKey: b.sessions.noKey.Load(),
		Remembered: remembered, Evicted: b.memory.evicted.Load()}
}

// AffinityOf returns the affinity of the pool for ingress; none when
// ingress is no pool's. It does not allocate.
func (b *Broker) AffinityOf(ingress []byte) Affinity { return b.PoolRef(ingress).Affinity() }

// The hash is the broker's own, fixed here: every replica, whatever its
// version or machine, must rank a session's routers alike, so a change to
// it moves every session during a rolling upgrade (a golden test holds it).
const (
	hashSeed = 0x6a09e667f3bcc908
	hashMul  = 0x9e3779b97f4a7c15
)

// sessionHash hashes a key or a router's path, 8 bytes at a time.
func sessionHash[T string | []byte](b T) uint64 {
	h := uint64(hashSeed) ^ uint64(len(b))*hashMul
	i := 0
	for ; i+8 <= len(b); i += 8 {
		v := uint64(b[i]) | uint64(b[i+1])<<8 | uint64(b[i+2])<<16 | uint64(b[i+3])<<24 |
			uint64(b[i+4])<<32 | uint64(b[i+5])<<40 | uint64(b[i+6])<<48 | uint64(b[i+7])<<56
		h = (h ^ v) * hashMul
		h ^= h >> 32
	}
	var v uint64
	for k := 0; i < len(b); i, k = i+1, k+8 {
		v |= uint64(b[i]) << k
	}
	h = (h ^ v) * hashMul
	return fmix(h)
}

// fmix is MurmurHash3's 64-bit finalizer: every bit of x moves every bit
// of the result.
func fmix(x uint64) uint64 {
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}

// score is the rank of a router of seed and weight w for the session of
// key hash h: the session's order is the routers by score, highest
// first. w / -ln(u), for u uniform in (0, 1) from the pair, makes each
// router first for its weight's share of the sessions (weighted
// rendezvous hashing). A tier of equal weights compares u alone, which
// orders alike without the logarithm.
func score(h, seed uint64, w int, equal bool) float64 {
	x := fmix(h^seed) >> 11 // 53 bits: exact in a float64
	if equal {
		return float64(x)
	}
	u := (float64(x) + 0.5) / (1 << 53)
	if u == 1 { // x = 2^53-1, rounded up: the best of ranks
		return math.Inf(1)
	}
	return float64(w) / -math.Log(u)
}

// boundSlack widens scoreBounds by far more than the rounding of their
// few operations and of math.Log, so that they hold score as computed.
const boundSlack = 1e-9

// scoreBounds returns lo <= score(h, seed, w, equal) <= hi, without the
// logarithm, which is most of a score's time: a session's first router
// is nearly always found from the bounds alone (see Tier.affine). With
// z = (1-u)/u, -ln(u) = ln(1+z), and for z >= 0
// 2z/(2+z) <= ln(1+z) <= z(6+z)/(6+4z); in u and v = 1-u these are
// 2v/(1+u) and v(1+5u)/(u(4+2u)), within a few percent of each other for
// the u of a session's first router (near 1).
func scoreBounds(h, seed uint64, w int, equal bool) (lo, hi float64) {
	x := fmix(h^seed) >> 11
	if equal {
		s := float64(x)
		return s, s
	}
	u := (float64(x) + 0.5) / (1 << 53)
	if u == 1 {
		return math.Inf(1), math.Inf(1)
	}
	v := 1 - u
	fw := float64(w)
	return fw * u * (4 + 2*u) / (v * (1 + 5*u)) * (1 - boundSlack), fw * (1 + u) / (2 * v) * (1 + boundSlack)
}

// affine picks the router of t for the session of key hash h: the first
// in the session's order that has rate limit left and is within its
// bound of the calls in flight (see Affinity.LoadFactor). spilled says
// the session's first router with room was passed over. It returns -1
// when no router of t has rate limit left: the next tier is asked.
//
// The common case, the session's first router within its bound, is found
// from each router's scoreBounds; when they leave it open (two scores too
// close to tell apart without the logarithm), or the first router is over
// its bound, the session's order is taken in full (affineOrdered).
func (t *Tier) affine(h uint64, factor float64) (i int, spilled bool) {
	var inFlight, weight int64
	first, firstBusy := -1, int64(0)
	// The bounds of first's score, and the highest upper bound of the
	// others'.
	var firstLo, firstHi, othersHi float64
	for j, rt := range t.routes {
		f := rt.stats.inFlight()
		if !rt.stats.hasRoom() {
			continue
		}
		inFlight += f
		weight += int64(t.weights[j])
		lo, hi := scoreBounds(h, t.seeds[j], t.weights[j], t.equal)
		switch {
		case first < 0:
			first, firstBusy, firstLo, firstHi = j, f, lo, hi
		case lo > firstLo:
			othersHi = max(othersHi, firstHi)
			first, firstBusy, firstLo, firstHi = j, f, lo, hi
		default:
			othersHi = max(othersHi, hi)
		}
	}
	if first < 0 {
		return -1, false
	}
	if othersHi < firstLo && within(firstBusy, inFlight, int64(t.weights[first]), weight, factor) {
		return first, false
	}
	return t.affineOrdered(h, factor)
}

// affineOrdered is affine from the session's order, taken in full: each
// router's score.
func (t *Tier) affineOrdered(h uint64, factor float64) (i int, spilled bool) {
	var idx [maxAffine]int
	var sc [maxAffine]float64
	var busy [maxAffine]int64 // each one's calls in flight
	n := 0
	var inFlight, weight int64
	for j, rt := range t.routes {
		f := rt.stats.inFlight()
		if !rt.stats.hasRoom() {
			continue
		}
		inFlight += f
		weight += int64(t.weights[j])
		s := score(h, t.seeds[j], t.weights[j], t.equal)
		// Insert into the first maxAffine by score.
		k := n
		if k == maxAffine {
			if s <= sc[maxAffine-1] {
				continue
			}
			k--
		} else {
			n++
		}
		for ; k > 0 && sc[k-1] < s; k-- {
			idx[k], sc[k], busy[k] = idx[k-1], sc[k-1], busy[k-1]
		}
		idx[k], sc[k], busy[k] = j, s, f
	}
	if n == 0 {
		return -1, false
	}
	// The bound counts this call (affinityBound). The calls in flight add
	// up to less than the bounds do, so over the whole tier one router is
	// always within its own.
	for k := range n {
		j := idx[k]
		if within(busy[k], inFlight, int64(t.weights[j]), weight, factor) {
			return j, k > 0
		}
	}
	best := 0
	for k := 1; k < n; k++ {
		if busy[best]*int64(t.weights[idx[k]]) > busy[k]*int64(t.weights[idx[best]]) {
			best = k
		}
	}
	return idx[best], best != 0
}

// within reports whether a router of weight w with f calls in flight is
// within its bound when its tier of weight W holds inFlight
// (affinityBound); under affinityFloor without computing it.
func within(f, inFlight, w, W int64, factor float64) bool {
	return f < affinityFloor || float64(f) < affinityBound(inFlight, w, W, factor)
}

// hasRoom reports whether the router has rate limit left for a call:
// what roomOf says.
func (s *routeStats) hasRoom() bool {
	r := s.room.Load()
	return r == nil || r.share(s.taken(r)) > 0
}

// firstFor reports whether rt, of weight w, comes before every router of
// t in the order of the session of key hash h: a router on probation
// takes its probe call from one of its own sessions only, so that a
// conversation is not sent for one call to a router it never used.
func (t *Tier) firstFor(h uint64, rt *route, w int) bool {
	s := score(h, rt.seed, w, false)
	for j := range t.routes {
		if score(h, t.seeds[j], t.weights[j], false) > s {
			return false
		}
	}
	return true
}

// loadFactor is p's load factor, the default when it gives none.
func (p *pool) loadFactor() float64 {
	if f := p.affinity.LoadFactor; f != 0 {
		return f
	}
	return DefaultLoadFactor
}

// firstFor reports whether rt, a router of p on probation, is the first
// of its tier in c for the session of key hash h (true when its tier has
// no enabled router).
func (p *pool) firstFor(c *choice, h uint64, rt *route) bool {
	i := -1
	for k, r := range p.routes {
		if r == rt {
			i = k
			break
		}
	}
	if i < 0 {
		return false
	}
	r := p.routers[i]
	for _, t := range c.tiers {
		if p.routers[t.index[0]].Priority == r.Priority {
			return t.firstFor(h, rt, r.Weight)
		}
	}
	return true
}
