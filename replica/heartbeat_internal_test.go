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
