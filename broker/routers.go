package broker

import (
	"slices"
	"time"
)

// RouterView is one router of one pool as this replica sees it, for
// operators: its phase, the record that put it there, and its calls.
type RouterView struct {
	Ingress string
	Router  string
	Phase   Phase
	// Record is the live record the view acts on (nil when the router is
	// enabled and none is held), with times held to the policy.
	Record *Record
	// Stored is the record as the store holds it when the policy held it
	// shorter (see Policy.Clamp); nil otherwise.
	Stored *Record
	// Provisional says the disable was announced by another replica and
	// has not landed in the store yet.
	Provisional bool
	// Probe names the replica holding the router's probe, while one does.
	Probe string
	// Chosen counts the calls this replica sent the router for the pool.
	Chosen uint64
}

// View returns every router of every pool, pools in the order they were
// configured and routers in each pool's order, as this replica sees them
// at now.
func (b *Broker) View(now time.Time) []RouterView {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []RouterView
	for _, ingress := range b.order {
		p := b.pools[ingress]
		for i, r := range p.routers {
			rt := b.members[p.ids[i]]
			v := RouterView{Ingress: ingress, Router: r.Path, Phase: phase(rt.live, now), Chosen: p.chosen[i].Load(),
				Provisional: !rt.heard.IsZero()}
			if rt.live != nil && v.Phase != Enabled {
				rec := *rt.live
				v.Record = &rec
				if rec.Probe != nil && now.Before(rec.Probe.Until) {
					v.Probe = rec.Probe.By
				}
			}
			if rt.stored != nil && v.Record != nil {
				stored := *rt.stored
				v.Stored = &stored
			}
			out = append(out, v)
		}
	}
	return out
}

// Unknown returns the routers no pool has that the store has held records
// for since this replica started (at most 256 are named): replicas ignore
// them.
func (b *Broker) Unknown() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for r := range b.unknown {
		if r != "" {
			out = append(out, r)
		}
	}
	slices.Sort(out)
	return out
}
