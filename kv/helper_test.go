package kv_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/kv"
)

// The harness the kv tests share: records to write, a store on a real
// JetStream bucket, a watcher that keeps what it hears, and the news
// subject's messages.

// record is an automatic disable of router for a 502, until until.
func record(router string, until time.Time) broker.Record {
	return broker.Record{Router: router, Status: 502, Reason: "egress status 502", At: time.Now(), Until: until, By: "test"}
}

// encode is the record as the bucket keeps it.
func encode(t *testing.T, r broker.Record) []byte {
	t.Helper()
	b, err := kv.Encode(r)
	if err != nil {
		t.Fatalf("encode: %v", err)
	}
	return b
}

// open opens the store on bucket "health", creating it, and closes it
// when the test ends.
func open(t *testing.T, js jetstream.JetStream) *kv.Store {
	t.Helper()
	s, err := kv.Open(context.Background(), js, kv.Config{Bucket: "health", Owner: "test"})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// watch starts a watcher of s that calls fn, and stops it and waits for
// it when the test ends. It returns the watcher's stop, which may be
// called again.
func watch(t testing.TB, ctx context.Context, s *kv.Store, fn func(broker.Event)) (stop func()) {
	t.Helper()
	stop, err := s.Watch(ctx, fn)
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	t.Cleanup(stop)
	return stop
}

// plainBucket creates the bucket as a server without per-message TTL would.
func plainBucket(t *testing.T, js jetstream.JetStream) jetstream.KeyValue {
	t.Helper()
	b, err := js.CreateKeyValue(context.Background(), jetstream.KeyValueConfig{Bucket: "health"})
	if err != nil {
		t.Fatalf("create plain bucket: %v", err)
	}
	return b
}

// keys lists the bucket's keys as `nats kv ls` does.
func keys(t *testing.T, js jetstream.JetStream) []string {
	t.Helper()
	b, err := js.KeyValue(context.Background(), "health")
	if err != nil {
		t.Fatalf("bucket: %v", err)
	}
	ks, err := b.Keys(context.Background())
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil
	}
	if err != nil {
		t.Fatalf("keys: %v", err)
	}
	return ks
}

// events collects what a watcher delivers.
type events struct {
	mu  sync.Mutex
	all []broker.Event
}

func (e *events) add(ev broker.Event) { e.mu.Lock(); e.all = append(e.all, ev); e.mu.Unlock() }

// last is the newest event for router, if any came.
func (e *events) last(router string) (broker.Event, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for i := len(e.all) - 1; i >= 0; i-- {
		if e.all[i].Router == router {
			return e.all[i], true
		}
	}
	return broker.Event{}, false
}

// manual is a disable by hand of router, until until (zero: until
// enabled).
func manual(router string, until time.Time) broker.Record {
	return broker.Record{Router: router, Reason: "maintenance", At: time.Now(), Until: until, By: "alice@ops", Manual: true}
}

// newsSubject is where the stores in these tests announce their writes.
const newsSubject = "test.news.health"

// openWithNews opens the store as owner, announcing its writes on
// newsSubject.
func openWithNews(t *testing.T, js jetstream.JetStream, owner string) *kv.Store {
	t.Helper()
	s, err := kv.Open(context.Background(), js, kv.Config{Bucket: "health", Owner: owner, News: newsSubject})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// nextNews waits for the next message on the news subject.
func nextNews(t *testing.T, sub *nats.Subscription) *nats.Msg {
	t.Helper()
	m, err := sub.NextMsg(2 * time.Second)
	if err != nil {
		t.Fatalf("no news within 2s: %v", err)
	}
	return m
}

// news is an announcement of a write to key, as another store sends it.
func news(key, op, rev string, body []byte) *nats.Msg {
	m := &nats.Msg{Subject: newsSubject, Header: nats.Header{}, Data: body}
	m.Header.Set("Kv-News-Key", key)
	m.Header.Set("Kv-News-Op", op)
	m.Header.Set("Kv-News-From", "someone")
	if rev != "" {
		m.Header.Set("Kv-News-Revision", rev)
	}
	return m
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }
