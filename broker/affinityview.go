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
// counted, nothing is in flight): the first of the session's order in
// the best tier that has room, and whether that passed over the
// session's first router (spilled). A probe call a router on probation
// takes from its own sessions aside. ok is false when the pool has no
// affinity, key is no key (empty, or longer than MaxSessionKey), or no
// router is enabled (the all-disabled rule answers).
func (b *Broker) SessionRouter(ingress string, key []byte) (router string, spilled, ok bool) {
	p := b.cur().pools[ingress]
	if p == nil || !p.affinity.On() || len(key) == 0 || len(key) > MaxSessionKey {
		return "", false, false
	}
	h := sessionHash(key)
	for _, t := range p.live.Load().tiers {
		if i, spilled := t.affine(h, p.loadFactor()); i >= 0 {
			return t.routes[i].path, spilled, true
		}
	}
	return "", false, false
}
