package broker

import "math/rand/v2"

// leastBusy sends a call to the router with the fewest calls in flight over
// the whole fleet, relative to its weight, breaking ties at random. Over 16
// routers it compares two chosen at random, which comes close at a fixed
// cost.
type leastBusy struct{}

func (leastBusy) Pick(t *Tier) int {
	n := t.Len()
	if n > 16 {
		a, b := rand.IntN(n), rand.IntN(n-1)
		if b >= a {
			b++
		}
		if busier(t, a, b) {
			return b
		}
		return a
	}
	// From a random start, so that of equally busy routers each is first
	// as often.
	start := rand.IntN(n)
	best := start
	for k := 1; k < n; k++ {
		if i := (start + k) % n; busier(t, best, i) {
			best = i
		}
	}
	return best
}

// busier reports whether router a has more calls in flight per weight than
// router b: a/wa > b/wb, compared without division.
func busier(t *Tier, a, b int) bool {
	return t.InFlight(a)*int64(t.Weight(b)) > t.InFlight(b)*int64(t.Weight(a))
}

// Shares gives the routers with the fewest calls in flight per weight an
// equal share of the next calls, and the others none (see Sharer): as the
// calls go out, the shares even out by weight.
func (leastBusy) Shares(t []RouterView, share []float64) bool {
	least := 0
	for i := range t {
		if t[least].InFlight*int64(t[i].Weight) > t[i].InFlight*int64(t[least].Weight) {
			least = i
		}
	}
	n := 0
	for i := range t {
		if t[i].InFlight*int64(t[least].Weight) == t[least].InFlight*int64(t[i].Weight) {
			n++
		}
	}
	for i := range t {
		share[i] = 0
		if t[i].InFlight*int64(t[least].Weight) == t[least].InFlight*int64(t[i].Weight) {
			share[i] = 1 / float64(n)
		}
	}
	return true
}
