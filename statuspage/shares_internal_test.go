package statuspage

import (
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
)

// counts is the core's view of the pool /a/ with routers /a/1/ and /a/2/
// chosen n1 and n2 times since the replica started.
func counts(n1, n2 uint64) []broker.RouterView {
	return []broker.RouterView{{Ingress: "/a/", Router: "/a/1/", Chosen: n1}, {Ingress: "/a/", Router: "/a/2/", Chosen: n2}}
}

func TestSharesCountRecentChoicesOnceThereIsAWindowAndSinceTheStartBefore(t *testing.T) {
	t0 := time.Now()
	var s shares
	for _, tc := range []struct {
		at      time.Duration
		views   []broker.RouterView
		seconds float64
		chosen  []uint64
	}{
		{0, counts(10, 0), 0, []uint64{10, 0}},                                                                 // first look: since the start
		{5 * time.Second, counts(10, 5), 0, []uint64{10, 5}},                                                   // too short a window: still since the start
		{12 * time.Second, counts(10, 25), 12, []uint64{0, 25}},                                                // the last 12 s: only /a/2/ was chosen
		{70 * time.Second, counts(30, 25), 65, []uint64{20, 20}},                                               // a minute back at most: from the 5 s sample
		{400 * time.Second, counts(40, 25), 0, []uint64{40, 25}},                                               // looked at again much later: since the start
		{401 * time.Second, counts(41, 25), 0, []uint64{41, 25}},                                               // and a window builds up again
		{412 * time.Second, counts(50, 30), 12, []uint64{10, 5}},                                               // from the 400 s sample
		{413 * time.Second, counts(1, 0), 0, []uint64{1, 0}},                                                   // counts that went back (a new core): since the start
		{430 * time.Second, []broker.RouterView{{Ingress: "/a/", Router: "/a/3/", Chosen: 4}}, 0, []uint64{4}}, // a router the samples lack
	} {
		is := is.New(t)
		seconds, chosen := s.recent(t0.Add(tc.at), tc.views)
		is.Equal(seconds, tc.seconds)
		is.Equal(chosen, tc.chosen)
		is.True(len(s.samples) <= int(window/time.Second)+2) // bounded
	}
}
