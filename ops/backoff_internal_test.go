package ops

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/matryer/is"
)

// TestBackoffPausesDoubleUpToTheCapWithHalfOfEachRandom: the n-th pause
// is between half and all of first·2ⁿ, capped at most, so that a retry
// never comes at once and writers that lost together spread out.
func TestBackoffPausesDoubleUpToTheCapWithHalfOfEachRandom(t *testing.T) {
	b := backoff{first: 25 * time.Millisecond, most: 200 * time.Millisecond}
	for n, full := range []time.Duration{25, 50, 100, 200, 200, 200} {
		full *= time.Millisecond
		lo, hi := full, time.Duration(0)
		for range 1000 {
			d := b.pause(n)
			lo, hi = min(lo, d), max(hi, d)
		}
		if lo < full/2 || hi > full || hi-lo < full/4 {
			t.Errorf("pause %d ranges over [%v, %v] in 1000 draws, want within [%v, %v] and spread over most of it", n, lo, hi, full/2, full)
		}
	}
	if d := b.pause(1 << 20); d > b.most { // no overflow however many tries
		t.Errorf("pause 2²⁰ is %v, more than the cap %v", d, b.most)
	}
}

// TestBackoffWaitEndsWithItsContext: a pause ends as soon as its context
// does, with the context's error.
func TestBackoffWaitEndsWithItsContext(t *testing.T) {
	is := is.New(t)
	b := backoff{first: time.Hour, most: time.Hour}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.wait(ctx, 0) }()
	cancel()
	select {
	case err := <-done:
		is.True(errors.Is(err, context.Canceled))
	case <-time.After(5 * time.Second):
		t.Fatal("a pause of half an hour or more went on 5 s after its context was cancelled")
	}
}
