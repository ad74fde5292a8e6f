package broker

import (
	"math/rand/v2"
	"slices"
	"time"
)

// explore is the share of calls the latency strategy sends at random (by
// weight), so that a slow router that recovers is noticed: with three
// routers each gets at least explore/3 of the calls.
const explore = 0.05

// lowestLatency sends a call to the router with the lowest recent upstream
// latency, from gecholog's transaction log. A router not yet heard of is
// tried first, one call at a time (while none of its calls is in flight
// over the fleet), so that a slow one takes one call, not every call until
// its first is heard of; and a share of calls keeps exploring. Until the
// log has been heard of at all, it is random.
type lowestLatency struct{}

func (lowestLatency) Pick(t *Tier) int {
	if rand.Float64() < explore {
		return t.Random()
	}
	n := t.Len()
	start := rand.IntN(n)
	best, bestLat := -1, time.Duration(0) // bestLat 0: best is unheard of
	heard := false
	for k := range n {
		i := (start + k) % n
		lat, ok := t.Latency(i)
		heard = heard || ok
		switch {
		case !ok && t.InFlight(i) > 0: // its first call is out: wait for it
		case !ok && (best < 0 || bestLat != 0): // unheard of: explore it
			best, bestLat = i, 0
		case ok && best < 0, ok && bestLat != 0 && lat < bestLat:
			best, bestLat = i, lat
		}
	}
	if !heard {
		return t.Random()
	}
	return best
}

// Shares gives the exploring share by weight to every router, and the
// rest to the routers Pick prefers (see Sharer): those not heard of whose
// first call is not out, else those of the lowest latency, in equal parts.
// Until any is heard of, it is by weight.
func (lowestLatency) Shares(t []RouterView, share []float64) bool {
	byWeight(t, share)
	heard := slices.ContainsFunc(t, func(v RouterView) bool { return v.LatencyKnown })
	if !heard {
		return true
	}
	untried := func(v RouterView) bool { return !v.LatencyKnown && v.InFlight == 0 }
	best := make([]bool, len(t))
	n := 0
	if slices.ContainsFunc(t, untried) {
		for i, v := range t {
			if best[i] = untried(v); best[i] {
				n++
			}
		}
	} else {
		lowest := time.Duration(-1)
		for _, v := range t {
			if v.LatencyKnown && (lowest < 0 || v.Latency < lowest) {
				lowest = v.Latency
			}
		}
		for i, v := range t {
			if best[i] = v.LatencyKnown && v.Latency == lowest; best[i] {
				n++
			}
		}
	}
	for i := range t {
		share[i] *= explore
		if best[i] {
			share[i] += (1 - explore) / float64(n)
		}
	}
	return true
}
