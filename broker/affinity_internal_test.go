package broker

import (
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
