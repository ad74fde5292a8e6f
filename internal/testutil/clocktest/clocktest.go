// Package clocktest holds tests clear of the calendar's edges.
package clocktest

import (
	"testing"
	"time"
)

// MinuteToSpare returns once at least need of the clock's current minute
// is left, waiting for the next minute to begin when less is: a budget
// per minute starts again on the minute, so a test that fills one and
// then looks at it must not cross one. The wait ends at a known moment,
// the minute's start, not after a guessed time.
func MinuteToSpare(t testing.TB, need time.Duration) {
	t.Helper()
	if need >= time.Minute {
		t.Fatalf("clocktest: %v of a minute cannot be spared", need)
	}
	now := time.Now()
	next := now.Truncate(time.Minute).Add(time.Minute)
	if left := next.Sub(now); left < need {
		t.Logf("waiting %v for the next minute: %v of this one left, the test needs %v", left.Round(time.Millisecond), left.Round(time.Millisecond), need)
		time.Sleep(left)
	}
}
