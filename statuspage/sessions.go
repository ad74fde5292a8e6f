package statuspage

import (
	"sync"
	"time"

	"github.com/gecholog/broker/broker"
)

// Affinity is a pool's session affinity, as the page shows it: a header's
// name, never a value.
type Affinity struct {
	// Session is true when the pool keys calls by gecholog's session
	// (the first three parts of its id), false when by Header's value.
	Session bool `json:"session"`
	// Header names the request header the key is read from.
	Header string `json:"header"`
	// LoadFactor bounds a router's calls in flight, in times its weight's
	// share of its tier's (the default when the pool gives none).
	LoadFactor float64 `json:"load_factor"`
}

// Sessions are calls of pools with affinity by what became of their key
// (broker.SessionCounts): keyed went to their session's router or, when
// it was over its bound, the next in the session's order (Spilled, of
// Keyed); no_key went by the pool's strategy.
type Sessions struct {
	Keyed   uint64 `json:"keyed"`
	Spilled uint64 `json:"spilled"`
	NoKey   uint64 `json:"no_key"`
}

// RouterSessions are the sessions of a pool with "session" affinity on
// one router, as this replica's memory of gecholog's transaction log says
// (broker.SessionRouters): every replica hears the same log, so this is
// the fleet's. Pinned are remembered, within their lifetime, with their
// last call on the router; MovedIn and MovedOut count the sessions heard
// moving to it and away from it since the replica started.
type RouterSessions struct {
	Pinned   int    `json:"pinned"`
	MovedIn  uint64 `json:"moved_in"`
	MovedOut uint64 `json:"moved_out"`
}

// pinsEvery is how long a reading of the memory of sessions is shown:
// every open page asks for a snapshot every check, and SessionRouters
// looks at every session remembered.
const pinsEvery = time.Second

// pins is the last reading of the memory of sessions, by router, shared
// by every open page.
type pins struct {
	mu sync.Mutex
	b  *broker.Broker
	at time.Time
	of map[string]RouterSessions
}

// fill fills in, at now, the sessions of the routers of pools with
// "session" affinity, the only ones remembered. It reads b's memory only
// when such a pool is shown and the last reading is pinsEvery old.
func (p *pins) fill(b *broker.Broker, pools []Pool, now time.Time) {
	for i := range pools {
		if a := pools[i].Affinity; a == nil || !a.Session {
			continue
		}
		of := p.read(b, now)
		for j := range pools[i].Routers {
			r := &pools[i].Routers[j]
			if s, ok := of[r.Router]; ok {
				r.Sessions = &s
			}
		}
	}
}

func (p *pins) read(b *broker.Broker, now time.Time) map[string]RouterSessions {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.of != nil && p.b == b && now.Sub(p.at) < pinsEvery && !now.Before(p.at) {
		return p.of
	}
	p.b, p.at, p.of = b, now, map[string]RouterSessions{}
	for _, r := range b.SessionRouters() {
		p.of[r.Router] = RouterSessions{Pinned: r.Pinned, MovedIn: r.MovedIn, MovedOut: r.MovedOut}
	}
	return p.of
}

// affinity is a as the page shows it; nil when a is off. sessionHeader
// is the header a "session" pool reads.
func affinity(a broker.Affinity, sessionHeader string) *Affinity {
	if !a.On() {
		return nil
	}
	x := &Affinity{Session: a.Session, Header: a.Header, LoadFactor: a.Factor()}
	if a.Session {
		x.Header = sessionHeader
	}
	return x
}

// sessions adds up the counts of rs; nil when none told any. The sums
// saturate: what a forged word says cannot wrap them around.
func sessions(rs []Replica) *Sessions {
	var sum *Sessions
	add := func(a, b uint64) uint64 {
		if a+b < a {
			return ^uint64(0)
		}
		return a + b
	}
	for _, r := range rs {
		if r.Sessions == nil {
			continue
		}
		if sum == nil {
			sum = &Sessions{}
		}
		sum.Keyed, sum.Spilled, sum.NoKey = add(sum.Keyed, r.Sessions.Keyed), add(sum.Spilled, r.Sessions.Spilled), add(sum.NoKey, r.Sessions.NoKey)
	}
	return sum
}
