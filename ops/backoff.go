package ops

import (
	"context"
	"time"

	"github.com/gecholog/broker/broker"
)

// backoff is a pause between tries that doubles from first up to most,
// with equal jitter: half of each pause is fixed, so that a retry never
// comes at once, and half random, so that writers that lost together do
// not try again together.
type backoff struct {
	first, most time.Duration
}

// pause is the pause after the n-th failed try, counting from 0.
func (b backoff) pause(n int) time.Duration { return broker.Backoff(b.first, b.most, n+1) }

// wait pauses after the n-th failed try, counting from 0, and returns
// ctx's error if ctx ends first.
func (b backoff) wait(ctx context.Context, n int) error {
	t := time.NewTimer(b.pause(n))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
