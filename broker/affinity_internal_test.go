package broker

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/matryer/is"
)

// TestSessionHashIsFixed holds the session hash to its values: every
// replica of a fleet, whatever its version, must rank a session's routers
// alike, so a change here moves every session during a rolling upgrade.
// Change these values only knowingly, and say so in the release notes.
func TestSessionHashIsFixed(t *testing.T) {
	is := is.New(t)
	for _, tc := range []struct {
		in   string
		want uint64
	}{
		{"", 0xf027ca02423a3f09},
		{"AAA00001_1696681410696216000_3", 0x972063473293ea99},
		{"/azure/gpt4/", 0xa52d921f42e9df1b},
	} {
		is.Equal(sessionHash(tc.in), tc.want)         // the string's hash is fixed
		is.Equal(sessionHash(tc.in), tc.want)         // the string's hash is fixed
		is.Equal(sessionHash([]byte(tc.in)), tc.want) // and the same for its bytes
	}
}

func TestAffineIsBoundedAndAllocatesNothing(t *testing.T) {
	is := is.New(t)
	tier := tierOf(1, 2, 3)
	for _, rt := range tier.routes {
		rt.seed = sessionHash(rt.path)
		tier.seeds = append(tier.seeds, rt.seed)
	}
	h := sessionHash("AAA00001_1696681410696216000_3")
	n := testing.AllocsPerRun(100, func() { tier.affine(h, DefaultLoadFactor) })
	is.Equal(n, 0.0) // on the request's path: no allocation
}

// TestScoreBoundsHoldTheScore holds scoreBounds to what they promise, at
// both ends of u and in between, for weights from 1 to 1000.
func TestScoreBoundsHoldTheScore(t *testing.T) {
	is := is.New(t)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 200_000 {
		h, seed := rng.Uint64(), rng.Uint64()
		switch i {
		case 0: // u at its least: fmix(h^seed) = 0
			h, seed = 0, 0
		case 1: // and at its most
			h, seed = fmixInverse(^uint64(0)), 0
		}
		w := 1 + rng.IntN(1000)
		s := score(h, seed, w, false)
		lo, hi := scoreBounds(h, seed, w, false)
		if !(lo <= s && s <= hi) {
			t.Fatalf("h %#x, seed %#x, weight %d: score %v not within [%v, %v]", h, seed, w, s, lo, hi)
		}
		lo, hi = scoreBounds(h, seed, w, true)
		is.True(lo == score(h, seed, w, true) && hi == lo) // equal weights: the score itself
	}
}

// fmixInverse is the x for which fmix(x) = y.
func fmixInverse(y uint64) uint64 {
	y ^= y >> 33
	y *= 0x9cb4b2f8129337db // the inverse of 0xc4ceb9fe1a85ec53
	y ^= y >> 33
	y *= 0x4f74430c22a54005 // of 0xff51afd7ed558ccd
	y ^= y >> 33
	return y
}

// TestAffineChoosesAsTheSessionsOrderDoes holds affine, which finds the
// session's first router from the bounds of the scores, to affineOrdered,
// which takes the whole order by the scores: the same router for every
// session, in tiers of equal and unequal weights, idle and with routers
// over their bound or without rate limit left.
func TestAffineChoosesAsTheSessionsOrderDoes(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	const sessions = 20_000
	for _, weights := range [][]int{{1, 1, 2}, {1, 1, 1}, {5, 1}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, {100, 1, 1, 1}, {1}} {
		tier := tierOf(weights...)
		for _, rt := range tier.routes {
			rt.seed = sessionHash(rt.path)
			tier.seeds = append(tier.seeds, rt.seed)
		}
		tier.equal = !slices.ContainsFunc(weights, func(w int) bool { return w != weights[0] })
		for _, busy := range []bool{false, true} {
			open := 0 // sessions whose first router the bounds leave open
			for range sessions {
				if busy { // some routers over their bound, some without rate limit left
					for _, rt := range tier.routes {
						rt.stats.base.Store(int64(rng.IntN(40)))
						rt.stats.room.Store(nil)
						if rng.IntN(8) == 0 {
							rt.stats.room.Store(&room{requests: 0, limit: 10, tokens: 1})
						}
					}
				}
				h := rng.Uint64()
				got, gotSpilled := tier.affine(h, DefaultLoadFactor)
				want, wantSpilled := tier.affineOrdered(h, DefaultLoadFactor)
				if got != want || gotSpilled != wantSpilled {
					t.Fatalf("weights %v, session %#x: affine %d (spilled %v), the order %d (%v)", weights, h, got, gotSpilled, want, wantSpilled)
				}
				if !decided(tier, h) {
					open++
				}
			}
			if !busy {
				t.Logf("weights %v: the bounds leave %d of %d sessions' first router open", weights, open, sessions)
				if open > sessions/10 {
					t.Errorf("weights %v: %d of %d sessions take the logarithm: the bounds are no shortcut", weights, open, sessions)
				}
			}
		}
		for _, rt := range tier.routes {
			rt.stats.base.Store(0)
			rt.stats.room.Store(nil)
		}
	}
}

// decided reports whether the bounds of the scores of t's routers tell
// the first of the session of key hash h from the others.
func decided(t *Tier, h uint64) bool {
	first := 0
	lo := make([]float64, t.Len())
	hi := make([]float64, t.Len())
	for j := range t.routes {
		lo[j], hi[j] = scoreBounds(h, t.seeds[j], t.weights[j], t.equal)
		if lo[j] > lo[first] {
			first = j
		}
	}
	for j := range t.routes {
		if j != first && hi[j] >= lo[first] {
			return false
		}
	}
	return true
}
