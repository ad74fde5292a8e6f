package ops

import (
	"math"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/replica"
)

// TestStatusHasHeardTheFleetOnceEveryReplicaEachNamesHasSpoken shows when a
// one-shot status stops listening before its heartbeat's length: once it
// has heard as many replicas as any of them says the fleet has, and never
// on the word of a replica that does not say.
func TestStatusHasHeardTheFleetOnceEveryReplicaEachNamesHasSpoken(t *testing.T) {
	peers := func(n int) *int { return &n }
	for _, tc := range []struct {
		name  string
		heard map[string]*int // replica → the peers it told (nil: it did not say)
		all   bool
	}{
		{"none heard", nil, false},
		{"a replica alone", map[string]*int{"a": peers(0)}, true},
		{"a replica that hears another not yet heard", map[string]*int{"a": peers(1)}, false},
		{"both", map[string]*int{"a": peers(1), "b": peers(1)}, true},
		{"one of three whose peers heard only one other", map[string]*int{"a": peers(1), "b": peers(2)}, false},
		{"a replica from before Peers", map[string]*int{"a": nil}, false},
		{"a forged fleet larger than status keeps", map[string]*int{"a": peers(1 << 40)}, false},
		{"a forged fleet that overflows", map[string]*int{"a": peers(math.MaxInt)}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			is := is.New(t)
			f := &fleet{heard: map[string]heardStats{}}
			for id, p := range tc.heard {
				f.heard[id] = heardStats{at: time.Now(), msg: replica.StatsMessage{ID: id, Peers: p}}
			}
			is.Equal(f.all(), tc.all)
		})
	}
}
