package replica

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// Fleet is replicas of one configuration running in this process, each a
// full Run with its own NATS connection and bucket watcher, as the demo,
// the benchmarks and the tests run them.
type Fleet struct {
	// Replicas are the running replicas, named replica-1 to replica-n.
	Replicas []*Replica
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	mu       sync.Mutex
	errs     []error
}

// StartFleet runs n replicas of base, named replica-1 to replica-n, each
// logging to logger(id) (nil: base.Logger), and returns once they all
// answer calls. It fails when a replica stops before that, or when they
// are not all ready within 30 s; the replicas started are stopped then.
func StartFleet(ctx context.Context, base Config, n int, logger func(id string) *slog.Logger) (*Fleet, error) {
	ctx, cancel := context.WithCancel(ctx)
	f := &Fleet{cancel: cancel, Replicas: make([]*Replica, n)}
	ready := make(chan struct{}, n)
	ended := make(chan struct{}, n)
	for i := range n {
		c := base
		c.ID = fmt.Sprintf("replica-%d", i+1)
		if logger != nil {
			c.Logger = logger(c.ID)
		}
		c.Ready = func(r *Replica) { f.Replicas[i] = r; ready <- struct{}{} }
		f.wg.Go(func() {
			defer func() { ended <- struct{}{} }()
			if err := Run(ctx, c); err != nil {
				f.mu.Lock()
				f.errs = append(f.errs, fmt.Errorf("%s: %w", c.ID, err))
				f.mu.Unlock()
			}
		})
	}
	timeout := time.After(30 * time.Second)
	for range n {
		select {
		case <-ready:
		case <-ended:
			return nil, errors.Join(errors.New("a replica stopped before it served"), f.Stop())
		case <-timeout:
			return nil, errors.Join(errors.New("replicas not ready within 30s"), f.Stop())
		}
	}
	return f, nil
}

// Stop stops every replica, waits until each has stopped in order, and
// returns what any of them failed with.
func (f *Fleet) Stop() error {
	f.cancel()
	f.wg.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	return errors.Join(f.errs...)
}
