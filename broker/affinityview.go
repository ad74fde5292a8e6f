package broker

// Factor is the load factor a pool with affinity a bounds its routers
// by: a's own, or DefaultLoadFactor when it gives none.
func (a Affinity) Factor() float64 {
	if a.LoadFactor == 0 {
		return DefaultLoadFactor
	}
	return a.LoadFactor
}
