package broker

import (
	"math/rand/v2"
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
