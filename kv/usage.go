package kv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/broker"
)

// The budgets' counts, kept across restarts: a bucket of their own, one
// key per router (its path, as in the health bucket) and one per pool
// with a budget ("pool." and its ingress, UsageKey), holding what the
// router, or the calls through the pool, used in its current minute, day
// and month. Every replica counts
// the same calls from the transaction log; each writes its counts when
// they are more than the bucket holds, compare-and-set, and takes the
// bucket's when they are more (broker.MergeBudget): the bucket holds the
// most any replica counted, and a replica that starts reads it before it
// hears the log, so that a call is never counted twice.

// UsageBucket names the bucket of budget counts beside the health bucket.
func UsageBucket(healthBucket string) string { return healthBucket + "_usage" }

// maxUsageSize bounds a count's value: a few hundred bytes.
const maxUsageSize = 4 << 10

// UsageStore reads and writes the budgets' counts. A bucket deleted while
// it is used is made again at the next write.
type UsageStore struct {
	js       jetstream.JetStream
	bucket   string
	replicas int

	readOnly bool // never makes the bucket

	mu sync.Mutex
	kv jetstream.KeyValue // nil: not open
}

// OpenUsage opens the bucket of budget counts, creating it (with replicas
// replicas, 0: 1) when it is missing.
func OpenUsage(ctx context.Context, js jetstream.JetStream, bucket string, replicas int) (*UsageStore, error) {
	s := &UsageStore{js: js, bucket: bucket, replicas: replicas}
	_, _, err := s.open(ctx)
	return s, err
}

// ReadUsage opens the bucket of budget counts to read it, as an operator's
// command does: ErrNoBucket when it is missing, never made.
func ReadUsage(ctx context.Context, js jetstream.JetStream, bucket string) (*UsageStore, error) {
	kv, err := js.KeyValue(ctx, bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrNoBucket, bucket)
	}
	if err != nil {
		return nil, noJetStream(err)
	}
	return &UsageStore{js: js, bucket: bucket, kv: kv, readOnly: true}, nil
}

// Bucket is the bucket's name.
func (s *UsageStore) Bucket() string { return s.bucket }

// open returns the bucket, creating it when it is missing; made says it
// was made by this call.
func (s *UsageStore) open(ctx context.Context) (kv jetstream.KeyValue, made bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.kv != nil {
		return s.kv, false, nil
	}
	kv, err = s.js.KeyValue(ctx, s.bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) && s.readOnly {
		return nil, false, fmt.Errorf("%w: %s", ErrNoBucket, s.bucket)
	}
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = s.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: s.bucket, History: 1, Replicas: s.replicas,
			Description: "what each router with a budget, and the calls through each pool with one (pool.<ingress>), used in its current minute, day and month (the broker's budgets)"})
		made = err == nil
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = s.js.KeyValue(ctx, s.bucket)
		}
	}
	if err != nil {
		return nil, false, noJetStream(err)
	}
	s.kv = kv
	return kv, made, nil
}

// gone forgets the bucket after err, when err says it was deleted.
func (s *UsageStore) gone(err error) bool {
	// A deleted bucket answers a read with no responders (a direct get),
	// a write with no stream response.
	if !errors.Is(err, jetstream.ErrBucketNotFound) && !errors.Is(err, jetstream.ErrStreamNotFound) &&
		!errors.Is(err, jetstream.ErrNoStreamResponse) && !errors.Is(err, nats.ErrNoResponders) {
		return false
	}
	s.mu.Lock()
	s.kv = nil
	s.mu.Unlock()
	return true
}

// ErrUsageGone says the bucket did not answer as a bucket that is there:
// deleted (or JetStream down); the next call makes it again.
var ErrUsageGone = errors.New("the bucket of budget counts is gone (deleted, or JetStream is down)")

// poolKeyPrefix starts the key of a pool's count: a router's key is its
// path, which starts with "/", so the two never meet, and `nats kv ls`
// says which is which.
const poolKeyPrefix = "pool."

// UsageKey is the key of c's count: the router's path, or "pool." and
// the pool's ingress ("pool./azure/"). A router or ingress path holds only
// letters, digits and "/", so either is a valid key.
func UsageKey(c broker.BudgetCount) string {
	if c.Router == "" {
		return poolKeyPrefix + c.Pool
	}
	return c.Router
}

// usageOf is the count a key names, without its figures.
func usageOf(key string) broker.BudgetCount {
	if ingress, ok := strings.CutPrefix(key, poolKeyPrefix); ok {
		return broker.BudgetCount{Pool: ingress}
	}
	return broker.BudgetCount{Router: key}
}

type usagePeriod struct {
	Start    time.Time `json:"start,omitzero"`
	Tokens   int64     `json:"tokens"`
	Requests int64     `json:"requests"`
	Spend    float64   `json:"spend"`
}

type usageDoc struct {
	Minute usagePeriod `json:"minute"`
	Day    usagePeriod `json:"day"`
	Month  usagePeriod `json:"month"`
	By     string      `json:"by,omitempty"`
	At     time.Time   `json:"at,omitzero"`
}

func toPeriod(u broker.Used) usagePeriod {
	return usagePeriod{Start: u.Start.UTC(), Tokens: u.Tokens, Requests: u.Requests, Spend: u.Spend}
}

func (p usagePeriod) used() broker.Used {
	return broker.Used{Start: p.Start, Tokens: p.Tokens, Requests: p.Requests, Spend: p.Spend}
}

// GetUsage returns what the bucket holds under key (see UsageKey), at
// revision rev (0: nothing).
func (s *UsageStore) GetUsage(ctx context.Context, key string) (c broker.BudgetCount, rev uint64, err error) {
	c = usageOf(key)
	if !ValidKey(key) {
		return c, 0, fmt.Errorf("key %q: %w", key, ErrInvalidKey)
	}
	kv, _, err := s.open(ctx)
	if err != nil {
		return c, 0, err
	}
	e, err := getKey(ctx, s.js.Conn(), kv, key, 0)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return c, 0, nil
	case s.gone(err):
		return c, 0, ErrUsageGone
	case err != nil:
		return c, 0, err
	}
	if len(e.Value()) > maxUsageSize {
		return c, e.Revision(), fmt.Errorf("key %q: a count of %d bytes, more than %d: not read", key, len(e.Value()), maxUsageSize)
	}
	var d usageDoc
	if err := json.Unmarshal(e.Value(), &d); err != nil {
		return c, e.Revision(), fmt.Errorf("key %q: not a count: %w", key, err)
	}
	c.Minute, c.Day, c.Month = d.Minute.used(), d.Day.used(), d.Month.used()
	return c, e.Revision(), nil
}

// PutUsage writes c, by replica by, over revision rev (0: the key must
// not exist): ErrConflict when the bucket holds another revision.
func (s *UsageStore) PutUsage(ctx context.Context, c broker.BudgetCount, rev uint64, by string) (uint64, error) {
	kv, _, err := s.open(ctx)
	if err != nil {
		return 0, err
	}
	data, err := json.Marshal(usageDoc{Minute: toPeriod(c.Minute), Day: toPeriod(c.Day), Month: toPeriod(c.Month), By: by, At: time.Now().UTC()})
	if err != nil {
		return 0, err
	}
	if rev == 0 {
		rev, err = kv.Create(ctx, UsageKey(c), data)
	} else {
		rev, err = kv.Update(ctx, UsageKey(c), data, rev)
	}
	switch {
	case errors.Is(err, jetstream.ErrKeyExists) || wrongLastSequence(err):
		return 0, ErrConflict
	case s.gone(err):
		return 0, ErrUsageGone
	}
	return rev, err
}
