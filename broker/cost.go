package broker

import (
	"cmp"
	"math"
	"math/rand/v2"
	"slices"
)

// cheapest sends a call to the router of the tier on which one call costs
// least: each router's price per million input, cached input and output
// tokens applied to the pool's average call, from the tokens its calls
// used as gecholog's transaction log said (DefaultTokenMix, 3 input to 1
// output, until one is heard). So a router cheap on input but dear on
// output wins while prompts dominate, and loses once answers do. Routers
// of equal cost share the calls at random by weight. A router whose
// upstream said it has no rate limit left (as headroom reads it) is
// passed over for the next cheapest; when none of the tier has any, the
// next tier takes the call. Over 16 routers it looks at the 16 cheapest.
// Every router of its pool has a price (ValidatePools).
type cheapest struct{}

// maxCheapest is how many of a tier's cheapest routers Pick looks at.
const maxCheapest = 16

func (cheapest) Pick(t *Tier) int {
	n := min(t.Len(), maxCheapest)
	var idx, w [maxCheapest]int
	for k := 0; k < n; {
		// The group of routers as cheap as the k-th: idx[k:end].
		cost, _ := t.CallCost(t.Cheapest(k))
		total, end := 0, k
		for ; end < n; end++ {
			i := t.Cheapest(end)
			if c, _ := t.CallCost(i); c != cost {
				break
			}
			idx[end], w[end] = i, 0
			if roomOf(t, i) > 0 {
				w[end] = t.Weight(i)
				total += w[end]
			}
		}
		if total > 0 {
			x := rand.IntN(total)
			for j := k; j < end; j++ {
				if x -= w[j]; x < 0 {
					return idx[j]
				}
			}
		}
		k = end
	}
	return -1
}

// Shares gives the cheapest routers per call that have headroom left
// their weight's part of the calls, and the others none (see Sharer). It
// declines a tier in which none has headroom left.
func (cheapest) Shares(t []RouterView, share []float64) bool {
	order := make([]int, len(t))
	for i := range order {
		order[i] = i
		share[i] = 0
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(callCost(t[a]), callCost(t[b])) })
	order = order[:min(len(order), maxCheapest)]
	for k := 0; k < len(order); {
		cost := callCost(t[order[k]])
		end, total := k, 0
		for ; end < len(order) && callCost(t[order[end]]) == cost; end++ {
			if v := t[order[end]]; hasRoom(v) {
				total += v.Weight
			}
		}
		if total > 0 {
			for _, i := range order[k:end] {
				if hasRoom(t[i]) {
					share[i] = float64(t[i].Weight) / float64(total)
				}
			}
			return true
		}
		k = end
	}
	return false
}

// callCost is v's cost per call, dearer than any when it has no price.
func callCost(v RouterView) float64 {
	if v.Price == nil {
		return math.Inf(1)
	}
	return v.CallCost
}

// hasRoom says v's upstream has not said it has no rate limit left.
func hasRoom(v RouterView) bool { return !v.HeadroomKnown || v.Room > 0 }
