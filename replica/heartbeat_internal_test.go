package replica

import (
	"math"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
)

// An idle replica hears about heardEach heartbeats a second whatever the
// fleet's size: a second apart up to heardEach+1 replicas, further apart
// beyond, so that the messages out of the server grow linearly with the
// fleet, up to 101 replicas, where the heartbeat reaches
// broker.MaxHeartbeat; told and read alike.
func TestHeartbeatsAreSpacedSoThatEachReplicaHearsABoundedNumber(t *testing.T) {
	is := is.New(t)
	for peers, want := range map[int]time.Duration{0: time.Second, 1: time.Second, 10: time.Second, 12: 1200 * time.Millisecond,
		19: 1900 * time.Millisecond, 99: 9900 * time.Millisecond, 100: broker.MaxHeartbeat, 1 << 20: broker.MaxHeartbeat} {
		is.Equal(heartbeat(peers), want)
		if peers > heardEach && heartbeat(peers) < broker.MaxHeartbeat {
			is.True(float64(peers)/heartbeat(peers).Seconds() <= heardEach) // heard a second
		}
	}
	for every, want := range map[int64]time.Duration{0: time.Second, -5: time.Second, 1900: 1900 * time.Millisecond,
		math.MaxInt64: broker.MaxHeartbeat, math.MinInt64: time.Second} {
		m := StatsMessage{Every: every}
		is.Equal(m.Heartbeat(), want)
	}
}

// While counts change, a replica's words are spaced likewise: every 10 ms
// (pools that read the fleet's calls in flight) up to a fleet of 11,
// further apart beyond, so that each replica hears about a thousand a
// second, capped at 20 ms, so that the calls in flight still agree within
// 25 ms; when no pool reads them (calm), a sixtieth of the failure-rate
// window, from 100 ms to a second, or, in a larger fleet, so that each
// hears about a hundred a second.
func TestWordsAreSpacedSoThatEachReplicaHearsABoundedNumber(t *testing.T) {
	is := is.New(t)
	for _, tc := range []struct {
		peers      int
		window     time.Duration
		busy, calm time.Duration
	}{
		{0, time.Second, 10 * time.Millisecond, 100 * time.Millisecond},
		{10, time.Second, 10 * time.Millisecond, 100 * time.Millisecond},
		{19, time.Second, 19 * time.Millisecond, 190 * time.Millisecond},
		{99, time.Second, statsEveryMost, 990 * time.Millisecond},
		{2, 12 * time.Second, 10 * time.Millisecond, 200 * time.Millisecond},
		{2, broker.DefaultRateWindow, 10 * time.Millisecond, time.Second},
		{2, 24 * time.Hour, 10 * time.Millisecond, time.Second},
		{199, broker.DefaultRateWindow, statsEveryMost, 1990 * time.Millisecond},
	} {
		// Told straight to every replica, spaced as the fleet grows.
		is.Equal(wordEvery(tc.peers, false, tc.window, false), tc.busy)
		is.Equal(wordEvery(tc.peers, true, tc.window, false), tc.calm)
		// Through the relay, delivered 2N times: not stretched.
		is.Equal(wordEvery(tc.peers, false, tc.window, true), statsEvery)
		is.Equal(wordEvery(tc.peers, true, tc.window, true), wordEvery(0, true, tc.window, false))
	}
}
