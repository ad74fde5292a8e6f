package broker_test

import (
	"context"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/testutil/natstest"
)

// gatedStore is a fakeStore whose writes land at once but whose answers
// wait until the test lets them go, as a write whose ack is still on its
// way back.
type gatedStore struct {
	*fakeStore
	landed  chan uint64
	release chan struct{}
}

func (g *gatedStore) Update(ctx context.Context, r broker.Record, rev uint64) (uint64, error) {
	n, err := g.fakeStore.Update(ctx, r, rev)
	g.landed <- n
	<-g.release
	return n, err
}

func enabled(b *broker.Broker, router string) bool {
	return slices.Contains(b.Routers("/azure/"), router)
}

// Issue 19: the replica that wrote a disable missed the delete that came
// right after it. The bucket keeps one message per key, so a delete that
// lands before the watcher delivered the put removes the put from the
// stream, and the watcher delivers the delete alone, while this replica's
// write still waits for its ack; the view held the delete back as "older
// than my change on its way" and lost it.
func TestADeleteArrivingWhileTheReplicasOwnWriteAwaitsItsAckIsTaken(t *testing.T) {
	is := is.New(t)
	const dud = "/azure/dud/"
	store := &gatedStore{fakeStore: newFakeStore(), landed: make(chan uint64, 1), release: make(chan struct{})}
	b, _ := newBroker(t, broker.Config{Store: store})
	report(b, dud, 502)
	is.True(!enabled(b, dud)) // out at once on this replica
	written := <-store.landed

	// An operator deletes the key (`broker enable`, `nats kv del`) before
	// the write's ack is back, and the watcher delivers the delete.
	deleted := store.put(broker.Record{Router: dud}, true)
	is.True(deleted > written) // the delete is the newer word
	b.Observe(broker.Event{Router: dud, Revision: deleted})
	close(store.release)

	natstest.Eventually(t, 5*time.Second, func() bool { return enabled(b, dud) },
		"the router the bucket no longer disables is chosen again")
}

// The same order with the enable older than the write: it must not undo
// the disable on its way.
func TestAnOlderEnableArrivingWhileTheReplicasOwnWriteIsOnItsWayIsDropped(t *testing.T) {
	is := is.New(t)
	const dud = "/azure/dud/"
	store := &gatedStore{fakeStore: newFakeStore(), landed: make(chan uint64, 1), release: make(chan struct{})}
	old := store.put(broker.Record{Router: dud}, true) // an enable from before
	b, _ := newBroker(t, broker.Config{Store: store})
	report(b, dud, 502)
	<-store.landed
	b.Observe(broker.Event{Router: dud, Revision: old})
	close(store.release)
	b.Close(context.Background()) // waits for the write to settle
	is.True(!enabled(b, dud))     // still out: the enable was older than the disable
}

// The test plays the watcher, and loses the event of a change in the
// bucket; Verify, the net under the watcher, finds it.
func TestVerifyTakesTheBucketsWordForAChangeTheViewNeverHeard(t *testing.T) {
	const dud = "/azure/dud/"
	for name, c := range map[string]struct {
		bucket func(f *fakeStore) // what happens in the bucket, unheard
	}{
		"a delete": {func(f *fakeStore) { f.put(broker.Record{Router: dud}, true) }},
		"a purge":  {func(f *fakeStore) { f.mu.Lock(); delete(f.last, dud); f.mu.Unlock() }},
		"a new bucket, revisions started over": {func(f *fakeStore) {
			f.mu.Lock()
			f.rev, f.last = 0, map[string]fakeMsg{}
			f.mu.Unlock()
		}},
	} {
		t.Run(name, func(t *testing.T) {
			is := is.New(t)
			store := newFakeStore()
			b, _ := newBroker(t, broker.Config{Store: store})
			report(b, dud, 502)
			natstest.Eventually(t, 5*time.Second, func() bool { _, live := store.entry(dud); return live }, "the disable lands")
			e, _ := store.entry(dud)
			b.Observe(broker.Event{Router: dud, Entry: &e, Revision: e.Revision}) // the watcher's word of it
			b.Close(context.Background())                                         // no write on its way
			b2, _ := newBroker(t, broker.Config{Store: store, ID: "replica-2"})
			b2.Observe(broker.Event{Router: dud, Entry: &e, Revision: e.Revision})
			is.True(!enabled(b2, dud)) // out, as the bucket says

			c.bucket(store)            // and the event is lost
			is.True(!enabled(b2, dud)) // still out: the view never heard the change
			is.NoErr(b2.Verify(t.Context(), math.MaxUint64))
			is.True(enabled(b2, dud))                   // the bucket's word, taken
			is.Equal(b2.Stats().ViewRepairs, uint64(1)) // counted once
			is.NoErr(b2.Verify(t.Context(), math.MaxUint64))
			is.Equal(b2.Stats().ViewRepairs, uint64(1)) // nothing more to repair
		})
	}
}

func TestAResetMakesTheViewTakeANewBucketsLowerRevisions(t *testing.T) {
	is := is.New(t)
	const dud = "/azure/dud/"
	b, _ := newBroker(t, broker.Config{Store: newFakeStore()})
	b.Observe(broker.Event{Router: dud, Revision: 40}) // the old bucket's 40th message
	rec := broker.Record{Router: dud, Reason: "manual", Manual: true, At: time.Now(), By: "op"}
	b.Observe(broker.Event{Router: dud, Revision: 3, Entry: &broker.Entry{Record: rec, Revision: 3}})
	is.True(enabled(b, dud)) // revision 3 is older than 40: dropped
	b.Observe(broker.Event{Reset: true})
	b.Observe(broker.Event{Router: dud, Revision: 3, Entry: &broker.Entry{Record: rec, Revision: 3}})
	is.True(!enabled(b, dud)) // after the reset, the new bucket's word
}
