package broker

import "math/rand/v2"

// fewestSessions places a conversation's first call, in a pool with
// "session" affinity: the call has no session key yet, and its session is
// then pinned where it went (sessionMemory), so where first calls go is
// where the pool's sessions live. It sends the call to the router with the
// fewest sessions pinned to it and calls in flight, relative to its
// weight, with this call counted; ties at random; a router whose upstream
// said it has no rate limit left is passed over, and a tier where none
// has any is declined, as a keyed call's is.
//
// Weighted random, the default of other pools, would spread 1,000
// sessions over three routers with a standard deviation of about 15 each
// (5% of a share), and a conversation's calls stay with its session, so
// the calls' shares would be as far off. Counting sessions keeps them
// within a few of their weight's share: every replica hears the same log
// and counts alike. The calls in flight keep first calls that come at once,
// before the log has told of any of them, from all going to one router;
// calls chosen on other replicas count once they are told (every few
// milliseconds), so a burst spread over the fleet can land a few more on
// one router, which the next first calls even out.
type fewestSessions struct{}

func (fewestSessions) Pick(t *Tier) int {
	n := t.Len()
	// From a random start, so that of equal routers each is first as
	// often; over 16 routers, 16 of them from there, at a fixed cost.
	start := rand.IntN(n)
	best, bestLoad := -1, int64(0)
	for k := range min(n, 16) {
		i := (start + k) % n
		f := t.InFlight(i)
		if !t.routes[i].stats.hasRoom() {
			continue
		}
		load := t.Sessions(i) + f + 1
		if best < 0 || load*int64(t.weights[best]) < bestLoad*int64(t.weights[i]) {
			best, bestLoad = i, load
		}
	}
	return best
}

// Shares gives the routers with the fewest sessions and calls in flight
// per weight, of those with rate limit left, an equal share of the next
// calls, and the others none (see Sharer); it declines a tier where none
// has rate limit left.
func (fewestSessions) Shares(t []RouterView, share []float64) bool {
	least := -1
	room := func(v RouterView) bool { return !v.HeadroomKnown || v.Room > 0 }
	load := func(v RouterView) int64 { return v.Sessions + v.InFlight + 1 }
	for i, v := range t {
		share[i] = 0
		if room(v) && (least < 0 || load(v)*int64(t[least].Weight) < load(t[least])*int64(v.Weight)) {
			least = i
		}
	}
	if least < 0 {
		return false
	}
	var at []int
	for i, v := range t {
		if room(v) && load(v)*int64(t[least].Weight) == load(t[least])*int64(v.Weight) {
			at = append(at, i)
		}
	}
	for _, i := range at {
		share[i] = 1 / float64(len(at))
	}
	return true
}
