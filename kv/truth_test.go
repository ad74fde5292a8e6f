package kv_test

import (
	"context"
	"math"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/kv"
)

// The bucket is the truth: these tests change it behind a watcher's back,
// as an operator or anyone who may publish on the bus can, and expect the
// watcher to deliver the bucket's word within a second or two (the check
// runs once a second; the bound here leaves a busy machine room).
const truthBound = 5 * time.Second

func TestForgedNewsIsOnlyAHintToReadTheBucket(t *testing.T) {
	is := is.New(t)
	srv := natstest.Start(t)
	js := natstest.JetStream(t, srv)
	writer := openWithNews(t, js, "replica-a")
	s := openWithNews(t, js, "replica-b")
	var got events
	watch(t, context.Background(), s, got.add)
	nc := natstest.Connect(t, srv)

	const dud = "/azure/dud/"
	forged := encode(t, record(dud, time.Now().Add(time.Hour)))
	// The revision no write can have, and a record the bucket does not hold.
	is.NoErr(nc.PublishMsg(news(dud, "put", itoa(math.MaxUint64), forged)))
	is.NoErr(nc.PublishMsg(news("/azure/gpt4/", "del", itoa(math.MaxUint64), nil)))
	is.NoErr(nc.Flush())

	// A real write after it: heard with the bucket's revision.
	rev, err := writer.Update(context.Background(), record(dud, time.Now().Add(time.Minute)), 0)
	is.NoErr(err)
	natstest.Eventually(t, truthBound, func() bool {
		ev, ok := got.last(dud)
		return ok && ev.Revision == rev && ev.Entry != nil
	}, "the real write is delivered with its revision %d", rev)
	got.mu.Lock()
	defer got.mu.Unlock()
	for _, ev := range got.all {
		is.True(ev.Revision != math.MaxUint64) // no forged revision is ever delivered
		is.True(ev.Router != "/azure/gpt4/")   // news of a key the bucket never had is nothing
	}
}

func TestAPurgedBucketIsReadAfresh(t *testing.T) {
	is := is.New(t)
	srv := natstest.Start(t)
	js := natstest.JetStream(t, srv)
	s := open(t, js)
	var got events
	watch(t, context.Background(), s, got.add)
	const dud = "/azure/dud/"
	for range 5 { // a few revisions, so that the purge removes history too
		e, _, err := s.Latest(context.Background(), dud)
		is.NoErr(err)
		_, err = s.Update(context.Background(), record(dud, time.Now().Add(time.Hour)), e.Revision)
		is.NoErr(err)
	}
	natstest.Eventually(t, truthBound, func() bool { ev, ok := got.last(dud); return ok && ev.Entry != nil }, "the disable is delivered")

	stream, err := js.Stream(context.Background(), "KV_health")
	is.NoErr(err)
	purged := time.Now()
	is.NoErr(stream.Purge(context.Background())) // $JS.API.STREAM.PURGE.KV_health
	natstest.Eventually(t, truthBound, func() bool { ev, ok := got.last(dud); return ok && ev.Entry == nil }, "the purged key is delivered as deleted")
	t.Logf("a purge was read afresh %v after it", time.Since(purged).Round(time.Millisecond))
}

func TestADeletedAndRecreatedBucketIsReadAfreshFromItsFirstRevision(t *testing.T) {
	is := is.New(t)
	srv := natstest.Start(t)
	js := natstest.JetStream(t, srv)
	s := open(t, js)
	var got events
	var resets atomic.Int32
	watch(t, context.Background(), s, func(ev broker.Event) {
		if ev.Reset {
			resets.Add(1)
		}
		got.add(ev)
	})
	const dud = "/azure/dud/"
	var last uint64
	for range 20 { // the old bucket's revisions run well past the new one's
		e, _, err := s.Latest(context.Background(), dud)
		is.NoErr(err)
		last, err = s.Update(context.Background(), record(dud, time.Now().Add(time.Hour)), e.Revision)
		is.NoErr(err)
	}
	natstest.Eventually(t, truthBound, func() bool { ev, ok := got.last(dud); return ok && ev.Revision == last }, "the old bucket's last write")

	is.NoErr(js.DeleteKeyValue(context.Background(), "health")) // `nats kv rm health -f`
	// Another replica, or the operator, makes it again, and writes to it.
	// The watcher makes the bucket again too; the server may refuse a
	// create that races the delete's clean-up, so try until one works.
	var other *kv.Store
	natstest.Eventually(t, truthBound, func() bool {
		var err error
		other, err = kv.Open(context.Background(), js, kv.Config{Bucket: "health", Owner: "other"})
		return err == nil
	}, "the bucket opens again")
	t.Cleanup(other.Close)
	made := time.Now()
	manual := record("/azure/gpt4/", time.Time{})
	manual.Manual = true
	rev, err := other.Update(context.Background(), manual, 0)
	is.NoErr(err)
	is.True(rev < last) // revisions started over
	natstest.Eventually(t, truthBound, func() bool {
		ev, ok := got.last("/azure/gpt4/")
		return ok && ev.Revision == rev && ev.Entry != nil && ev.Entry.Record.Manual
	}, "the new bucket's first write is delivered")
	natstest.Eventually(t, truthBound, func() bool { ev, ok := got.last(dud); return ok && ev.Entry == nil }, "the old bucket's key is gone")
	is.True(resets.Load() >= 1) // the watcher told that revisions start over
	t.Logf("a new bucket was read afresh %v after it was made", time.Since(made).Round(time.Millisecond))
}

// The net under the watcher: the view never takes one event (the test
// drops it, as a bug anywhere between the server and the view would), and
// Verify, run by the watcher after the bucket changed, repairs the view.
func TestAChangeTheViewNeverTookIsRepairedWithinASecond(t *testing.T) {
	is := is.New(t)
	srv := natstest.Start(t)
	js := natstest.JetStream(t, srv)
	s := open(t, js)
	b, err := broker.New(broker.Config{Pools: broker.DefaultPools(), Policy: broker.Policy{DisabledTime: time.Hour}, ID: "replica-1", Store: s})
	is.NoErr(err)
	t.Cleanup(func() { b.Close(context.Background()) })
	const dud = "/azure/dud/"
	var dropped atomic.Bool
	stop, err := s.Watch(context.Background(), func(ev broker.Event) {
		if ev.Router == dud && ev.Entry == nil && ev.Revision != 0 && dropped.CompareAndSwap(false, true) {
			return // the delete never reaches the view
		}
		b.Observe(ev)
	}, kv.WithVerify(b.Verify))
	is.NoErr(err)
	t.Cleanup(stop)

	enabled := func() bool { return slices.Contains(b.Routers("/azure/"), dud) }
	other := open(t, js)
	rev, err := other.Update(context.Background(), record(dud, time.Now().Add(time.Hour)), 0)
	is.NoErr(err)
	natstest.Eventually(t, truthBound, func() bool { return !enabled() }, "the disable reaches the view")
	deleted := time.Now()
	_, err = other.Delete(context.Background(), dud, rev)
	is.NoErr(err)
	natstest.Eventually(t, truthBound, dropped.Load, "the delete is delivered, and dropped")
	natstest.Eventually(t, truthBound, enabled, "the view takes the bucket's word")
	t.Logf("the lost delete was repaired %v after it", time.Since(deleted).Round(time.Millisecond))
	is.Equal(b.Stats().ViewRepairs, uint64(1)) // by the net, once
}
