package kv

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// WatchConfig calls fn with every new revision of the document after
// from (0: from the newest on), until ctx ends; gone is called once when the bucket
// disappears, after which the watch waits for a new bucket and follows
// it. It returns once the bucket is there, with a function that stops
// the watch and waits for fn to return.
func (s *ConfigStore) WatchConfig(ctx context.Context, from uint64, fn func(ConfigEntry), gone func()) (stop func(), err error) {
	if _, err := s.kv(ctx, false); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.follow(ctx, from, fn, gone)
	}()
	return func() { cancel(); <-done }, nil
}

// follow watches the key; when the bucket is gone, it says so and
// polls for a new one.
func (s *ConfigStore) follow(ctx context.Context, last uint64, fn func(ConfigEntry), gone func()) {
	for ctx.Err() == nil {
		kv, err := s.kv(ctx, false)
		if err != nil {
			if errors.Is(err, ErrNoBucket) && gone != nil && last != 0 {
				gone()
				last = 0
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(250 * time.Millisecond):
			}
			continue
		}
		w, err := kv.Watch(ctx, ConfigKey)
		if err != nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(250 * time.Millisecond):
			}
			continue
		}
		s.drain(ctx, w, fn, &last, gone)
		w.Stop()
	}
}

// drain delivers the watcher's entries until it ends or the bucket goes.
func (s *ConfigStore) drain(ctx context.Context, w jetstream.KeyWatcher, fn func(ConfigEntry), last *uint64, gone func()) {
	check := time.NewTicker(500 * time.Millisecond)
	defer check.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e == nil {
				continue // the initial values are delivered
			}
			ce := entry(e)
			if ce.Revision > *last {
				*last = ce.Revision
				fn(ce)
			}
		case <-check.C:
			// A deleted bucket ends no watcher: look for it.
			if _, err := s.js.KeyValue(ctx, s.bucket); errors.Is(err, jetstream.ErrBucketNotFound) {
				if gone != nil && *last != 0 {
					gone()
				}
				*last = 0
				return
			}
		}
	}
}
