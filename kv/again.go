package kv

import (
	"context"
	"sync"
	"time"
)

// eachSecond asks ask, and again each second that no question was
// answered while the earlier ones wait on (a slow server answers the
// first, a stream that has elected its leader the latest), and returns
// the first answer, or ctx's error when it ends first. It calls waiting
// each time a second passes without an answer. Every question has ended
// when it returns.
func eachSecond[T any](ctx context.Context, waiting func(), ask func(context.Context) (T, error)) (T, error) {
	type answer struct {
		v   T
		err error
	}
	ctx, cancel := context.WithCancel(ctx)
	var asking sync.WaitGroup
	defer asking.Wait()
	defer cancel()
	answers := make(chan answer)
	again := time.NewTicker(time.Second)
	defer again.Stop()
	for {
		asking.Go(func() {
			v, err := ask(ctx)
			select {
			case answers <- answer{v, err}:
			case <-ctx.Done():
			}
		})
		select {
		case a := <-answers:
			return a.v, a.err
		case <-ctx.Done():
			var zero T
			return zero, ctx.Err()
		case <-again.C:
			waiting()
		}
	}
}
