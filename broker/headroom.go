package broker

import "math/rand/v2"

// mostHeadroom avoids 429s before they happen: it weighs each router by
// the share of its rate limit left, as its upstream's rate-limit headers
// last said (OpenAI's and Azure OpenAI's x-ratelimit-*, Anthropic's
// anthropic-ratelimit-*), less the calls in flight to it that the last
// answer could not know of, times its weight. A router with none left gets
// no call until its reset; when no router of the tier has any, the next
// tier takes the call. A router whose upstream sends no such headers
// counts as full, so a tier without any is random.
type mostHeadroom struct{}

func (mostHeadroom) Pick(t *Tier) int {
	var total float64
	var w [16]float64 // per router, for tiers of up to 16; larger ones sample
	n := t.Len()
	if n > len(w) {
		// Two at random, the one with more headroom: bounded time.
		a, b := rand.IntN(n), rand.IntN(n)
		ha, hb := roomOf(t, a), roomOf(t, b)
		switch {
		case ha <= 0 && hb <= 0:
			return -1
		case hb > ha:
			return b
		}
		return a
	}
	for i := range n {
		w[i] = roomOf(t, i) * float64(t.Weight(i))
		total += w[i]
	}
	if total <= 0 {
		return -1
	}
	x := rand.Float64() * total
	for i := range n {
		if x -= w[i]; x < 0 && w[i] > 0 {
			return i
		}
	}
	for i := n - 1; i >= 0; i-- { // rounding: the last with any
		if w[i] > 0 {
			return i
		}
	}
	return -1
}

// roomOf is router i's headroom, full when its upstream says nothing.
func roomOf(t *Tier, i int) float64 {
	if h, ok := t.Headroom(i); ok {
		return h
	}
	return 1
}

// Shares gives each router its headroom times its weight over the tier's
// (see Sharer); a router whose upstream says nothing counts as full. It
// declines a tier in which none has any.
func (mostHeadroom) Shares(t []RouterView, share []float64) bool {
	var total float64
	for i, v := range t {
		share[i] = float64(v.Weight)
		if v.HeadroomKnown {
			share[i] *= v.Room
		}
		total += share[i]
	}
	if total <= 0 {
		return false
	}
	for i := range share {
		share[i] /= total
	}
	return true
}
