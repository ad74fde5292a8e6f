package broker

// Factor is the load factor a pool with affinity a bounds its routers
// by: a's own, or DefaultLoadFactor when it gives none.
func (a Affinity) Factor() float64 {
	if a.LoadFactor == 0 {
		return DefaultLoadFactor
	}
	return a.LoadFactor
}

// SessionRouter returns the router a call for ingress keyed by key goes
// to now, as ChooseSession would choose it, without choosing (nothing is
// counted, nothing is in flight), and whether that passed over the
// session's first router (spilled). See SessionWay.
func (b *Broker) SessionRouter(ingress string, key []byte) (router string, spilled, ok bool) {
	w := b.SessionWay(ingress, key)
	return w.Router, w.Spilled, w.Router != ""
}

// SessionWay is where a session's next call goes, and why.
type SessionWay struct {
	// Router is the router; "" when the pool has no affinity, the key is
	// no key (empty, or longer than MaxSessionKey), or no router is
	// enabled (the all-disabled rule answers).
	Router string
	// Spilled says Router is not the first of the session's order in its
	// tier (that one is over its bound or has no rate limit left).
	Spilled bool
	// Home is the router the transaction log says the session goes back
	// to ("" when it is not remembered, or its lifetime is over), and
	// Remembered says Router is Home: the call goes there by the memory,
	// not by the session's order.
	Home       string
	Remembered bool
}

// SessionWay returns where a call for ingress keyed by key goes now, as
// ChooseSession would choose it, without choosing: the session's home
// when it is remembered and can take the call, else the first of the
// session's order in the best tier that has room. A probe call a router
// on probation takes from its own sessions aside. It reads one entry of
// the memory: as cheap as a call.
func (b *Broker) SessionWay(ingress string, key []byte) SessionWay {
	p := b.cur().pools[ingress]
	if p == nil || !p.affinity.On() || len(key) == 0 || len(key) > MaxSessionKey {
		return SessionWay{}
	}
	h := sessionHash(key)
	var w SessionWay
	var home *route
	if p.affinity.Session {
		if home = b.memory.home(h ^ p.seed); home != nil {
			w.Home = home.path
		}
	}
	tiers := p.live.Load().tiers
	if home != nil && p.affinity.Stay {
		for _, t := range tiers {
			if j := t.indexOf(home); j >= 0 {
				if t.takes(j, p.loadFactor()) {
					w.Router, w.Remembered = home.path, true
					return w
				}
				break
			}
		}
	}
	for _, t := range tiers {
		if home != nil && !p.affinity.Stay {
			if j := t.indexOf(home); j >= 0 && t.takes(j, p.loadFactor()) {
				w.Router, w.Remembered = home.path, true
				return w
			}
		}
		if i, spilled := t.affine(h, p.loadFactor()); i >= 0 {
			w.Router, w.Spilled = t.routes[i].path, spilled
			return w
		}
	}
	return w
}
