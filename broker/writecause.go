package broker

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"
)

// WriteCauses are why a read or write of the store failed, as
// broker_kv_write_failures_total counts them: a lost compare-and-set race,
// no answer in time, a stream without a leader or its quorum, no
// JetStream, no connection, or anything else. A store names the cause by
// giving an error with a Cause method that returns one of these (see kv);
// otherwise a deadline is a timeout and the rest is other.
var WriteCauses = [...]string{"conflict", "timeout", "no_leader", "no_quorum", "no_jetstream", "not_connected", "other"}

const (
	causeConflict = iota
	causeTimeout
	causeOther = len(WriteCauses) - 1
)

// writeCause is err's index in WriteCauses.
func writeCause(err error) int {
	var c interface{ Cause() string }
	switch {
	case errors.Is(err, ErrConflict):
		return causeConflict
	case errors.As(err, &c):
		for i, name := range WriteCauses {
			if name == c.Cause() {
				return i
			}
		}
	case errors.Is(err, context.DeadlineExceeded):
		return causeTimeout
	}
	return causeOther
}

// Backing off. A write that conflicts is decided again at once the first
// time (another replica wrote the same key a moment before: the usual
// race) and then after a jittered pause that doubles, so that replicas
// whose reads lag the stream (a follower's direct get during a partition)
// do not spin; a write that fails waits likewise, from longer. Both are
// capped, so a write lands within a second of the store answering again.
const (
	conflictPause = 5 * time.Millisecond
	failurePause  = 50 * time.Millisecond
	maxPause      = time.Second
)

// pause is the wait before attempt n+1 (n ≥ 1) after n attempts that
// failed alike, from first, capped at maxPause (see Backoff).
func pause(first time.Duration, n int) time.Duration { return Backoff(first, maxPause, n) }

// Backoff is the wait before attempt n+1 (n ≥ 1) after n attempts that
// failed alike: first × 2^(n-1), capped at most, jittered over its upper
// half, so that a retry never comes at once and writers that lost
// together do not try again together.
func Backoff(first, most time.Duration, n int) time.Duration {
	d := most
	if n <= 30 {
		d = min(first<<(n-1), most)
	}
	return d/2 + rand.N(d-d/2+1)
}
