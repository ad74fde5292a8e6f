package kv_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/matryer/is"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/kv"
)

func TestOpenCreatesBucketWithPerKeyTTLOnNewServer(t *testing.T) {
	is := is.New(t)
	js := natstest.JetStream(t, natstest.Start(t))
	s := open(t, js)
	is.Equal(s.Mode(), kv.ModeTTL)
	b, err := js.KeyValue(context.Background(), "health")
	is.NoErr(err)
	st, err := b.Status(context.Background())
	is.NoErr(err)
	is.True(st.LimitMarkerTTL() > 0) // the bucket keeps limit markers
}

func TestOpenGivesANewBucketItsDescription(t *testing.T) {
	is := is.New(t)
	ctx := context.Background()
	js := natstest.JetStream(t, natstest.Start(t))
	s, err := kv.Open(ctx, js, kv.Config{Bucket: "health", Description: "router health for the broker"})
	is.NoErr(err)
	t.Cleanup(s.Close)
	st, err := js.Stream(ctx, "KV_health")
	is.NoErr(err)
	info, err := st.Info(ctx)
	is.NoErr(err)
	is.Equal(info.Config.Description, "router health for the broker") // what `nats kv info` shows
}

func TestOpenKeepsExistingBucketWithoutTTLAndUsesExpiryMode(t *testing.T) {
	is := is.New(t)
	js := natstest.JetStream(t, natstest.Start(t))
	b := plainBucket(t, js)
	_, err := b.Put(context.Background(), "/azure/dud/", encode(t, record("/azure/dud/", time.Now().Add(time.Hour))))
	is.NoErr(err)

	s := open(t, js)
	is.Equal(s.Mode(), kv.ModeExpiry)
	is.Equal(keys(t, js), []string{"/azure/dud/"}) // the existing bucket and its key are untouched
}

func TestOpenWithoutJetStreamSaysSo(t *testing.T) {
	is := is.New(t)
	js := natstest.JetStream(t, natstest.Start(t, natstest.WithoutJetStream()))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := kv.Open(ctx, js, kv.Config{Bucket: "health"})
	is.True(errors.Is(err, kv.ErrNoJetStream)) // error names the missing JetStream
}

func TestCreateRefusesLiveKeyAndUpdateRefusesStaleRevision(t *testing.T) {
	is := is.New(t)
	ctx := context.Background()
	s := open(t, natstest.JetStream(t, natstest.Start(t)))
	r := record("/azure/dud/", time.Now().Add(time.Minute))

	rev, err := s.Create(ctx, r)
	is.NoErr(err)
	_, err = s.Create(ctx, r)
	is.True(errors.Is(err, kv.ErrExists)) // a second create finds the live key

	rev2, err := s.Update(ctx, r, rev)
	is.NoErr(err)
	_, err = s.Update(ctx, r, rev)
	is.True(errors.Is(err, kv.ErrConflict)) // the first revision is stale now

	got, err := s.Get(ctx, "/azure/dud/")
	is.NoErr(err)
	is.Equal(got.Revision, rev2)
	is.Equal(got.Record.Status, 502)
	if !got.Record.Until.Equal(r.Until) {
		t.Fatalf("the record read back ends at %v, not %v as written", got.Record.Until, r.Until)
	}

	_, err = s.Delete(ctx, "/azure/dud/", rev)
	is.True(errors.Is(err, kv.ErrConflict)) // delete at a stale revision is refused
	_, err = s.Delete(ctx, "/azure/dud/", rev2)
	is.NoErr(err)
	if _, err = s.Get(ctx, "/azure/dud/"); !errors.Is(err, kv.ErrNotFound) {
		t.Fatalf("Get of the deleted key: %v, want kv.ErrNotFound", err)
	}
	_, err = s.Create(ctx, r) // a deleted key can be created again
	is.NoErr(err)
}

func TestWatchLoadsEveryRecordBeforeReturning(t *testing.T) {
	is := is.New(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	js := natstest.JetStream(t, natstest.Start(t))
	s := open(t, js)
	routers := []string{"/a/1/", "/a/2/", "/b/1/"}
	for _, r := range routers {
		_, err := s.Create(ctx, record(r, time.Now().Add(time.Hour)))
		is.NoErr(err)
	}
	var ev events
	watch(t, ctx, s, ev.add)
	for _, r := range routers {
		e, ok := ev.last(r)
		is.True(ok)             // delivered before Watch returned
		is.True(e.Entry != nil) // as a live record
	}
}

func TestExpiredKeyVanishesAndWatchersHearIt(t *testing.T) {
	for _, mode := range []kv.Mode{kv.ModeTTL, kv.ModeExpiry} {
		t.Run(mode.String(), func(t *testing.T) {
			is := is.New(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			js := natstest.JetStream(t, natstest.Start(t))
			if mode == kv.ModeExpiry {
				plainBucket(t, js)
			}
			s := open(t, js)
			is.Equal(s.Mode(), mode)
			var ev events
			watch(t, ctx, s, ev.add)

			until := time.Now().Add(1200 * time.Millisecond)
			_, err := s.Create(ctx, record("/azure/dud/", until))
			is.NoErr(err)
			natstest.Eventually(t, 2*time.Second, func() bool {
				e, ok := ev.last("/azure/dud/")
				return ok && e.Entry != nil
			}, "watcher sees the disable")
			is.Equal(keys(t, js), []string{"/azure/dud/"})

			natstest.Eventually(t, 5*time.Second, func() bool {
				e, _ := ev.last("/azure/dud/")
				return e.Entry == nil
			}, "watcher sees the key go")
			is.True(!time.Now().Before(until)) // never before Until
			is.Equal(keys(t, js), nil)         // `nats kv ls` is empty again
		})
	}
}

func TestUpdateCarriesTheNewTTL(t *testing.T) {
	is := is.New(t)
	ctx := context.Background()
	js := natstest.JetStream(t, natstest.Start(t))
	s := open(t, js)
	rev, err := s.Create(ctx, record("/azure/dud/", time.Now().Add(time.Hour)))
	is.NoErr(err)
	_, err = s.Update(ctx, record("/azure/dud/", time.Now().Add(time.Second)), rev)
	is.NoErr(err)
	natstest.Eventually(t, 5*time.Second, func() bool { return len(keys(t, js)) == 0 }, "the updated key expires by its new TTL")
}

func TestWatchReportsUnreadableRecordAsNoDisable(t *testing.T) {
	is := is.New(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	js := natstest.JetStream(t, natstest.Start(t))
	s := open(t, js)
	var ev events
	watch(t, ctx, s, ev.add)
	_, err := s.Create(ctx, record("/azure/dud/", time.Now().Add(time.Hour)))
	is.NoErr(err)
	b, err := js.KeyValue(ctx, "health")
	is.NoErr(err)
	for _, bad := range []string{"{not json", `{"v":99,"router":"/azure/dud/"}`} {
		_, err = b.Put(ctx, "/azure/dud/", []byte(bad))
		is.NoErr(err)
		natstest.Eventually(t, 2*time.Second, func() bool {
			e, _ := ev.last("/azure/dud/")
			return e.Entry == nil
		}, "an unreadable record %q disables nothing", bad)
	}
}

func TestDecodeTakesRouterFromKey(t *testing.T) {
	is := is.New(t)
	r, err := kv.Decode("/azure/gpt4/", []byte(`{"v":1,"router":"/azure/dud/","reason":"x"}`))
	is.NoErr(err)
	is.Equal(r.Router, "/azure/gpt4/")
}

func TestEncodeWritesTheDocumentedFormat(t *testing.T) {
	is := is.New(t)
	at := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	v, err := kv.Encode(broker.Record{Router: "/azure/dud/", Status: 502, Reason: "egress_status_code 502",
		At: at, Until: at.Add(10 * time.Minute), By: "broker-7f9c:1"})
	is.NoErr(err)
	is.Equal(string(v), `{"v":1,"router":"/azure/dud/","status":502,"reason":"egress_status_code 502",`+
		`"at":"2026-11-25T12:00:00Z","until":"2026-11-25T12:10:00Z","by":"broker-7f9c:1"}`)
}

func TestDecodeReadsBackEveryFieldEncodeWrites(t *testing.T) {
	is := is.New(t)
	at := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	for _, r := range []broker.Record{
		{Router: "/a/", Status: 429, Reason: "probe failed: egress_status_code 429", At: at, Until: at.Add(time.Hour),
			By: "r1", Level: 3, Probe: &broker.Probe{By: "r2", At: at.Add(time.Minute), Until: at.Add(3 * time.Minute)}},
		{Router: "/a/", Reason: "maintenance", At: at, By: "alice@ops", Manual: true},
		{Router: "/a/", Reason: "probe succeeded", At: at, By: "r1", Level: 2, Failures: 1, Ended: at.Add(time.Second)},
	} {
		v, err := kv.Encode(r)
		is.NoErr(err)
		got, err := kv.Decode("/a/", v)
		is.NoErr(err)
		is.Equal(got, r) // nothing lost on the way through the bucket
	}
}

func TestRecordIsActiveUntilItsUntil(t *testing.T) {
	is := is.New(t)
	now := time.Now()
	is.True(record("/r/", now.Add(time.Second)).ActiveAt(now))              // active before its until
	is.True(!record("/r/", now).ActiveAt(now))                              // and no longer at it
	is.True(record("/r/", time.Time{}).ActiveAt(now.Add(1000 * time.Hour))) // zero Until: until deleted
}

func TestOpenWithNoCreateLeavesAMissingBucketMissing(t *testing.T) {
	is := is.New(t)
	js := natstest.JetStream(t, natstest.Start(t))
	if _, err := kv.Open(context.Background(), js, kv.Config{Bucket: "health", NoCreate: true}); !errors.Is(err, kv.ErrNoBucket) {
		t.Fatalf("Open with NoCreate of a missing bucket: %v, want kv.ErrNoBucket", err)
	}
	_, err := js.KeyValue(context.Background(), "health")
	is.True(errors.Is(err, jetstream.ErrBucketNotFound)) // not created
}

func TestReleaseLeavesAMemoThatLatestAndWatchersReadButKvLsDoesNot(t *testing.T) {
	is := is.New(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	js := natstest.JetStream(t, natstest.Start(t))
	s := open(t, js)
	var ev events
	watch(t, ctx, s, ev.add)

	e, live, err := s.Latest(ctx, "/azure/dud/")
	is.NoErr(err)
	is.True(!live)                  // no live record before any write
	is.Equal(e.Revision, uint64(0)) // never written

	rev, err := s.Update(ctx, record("/azure/dud/", time.Now().Add(time.Hour)), 0)
	is.NoErr(err)
	e, live, err = s.Latest(ctx, "/azure/dud/")
	is.NoErr(err)
	is.True(live) // the disable is the live record
	is.Equal(e.Revision, rev)

	memo := broker.Record{Router: "/azure/dud/", Level: 2, Ended: time.Now(), Reason: "probe succeeded"}
	_, err = s.Release(ctx, memo, rev-1)
	is.True(errors.Is(err, kv.ErrConflict)) // compare-and-set
	rev2, err := s.Release(ctx, memo, rev)
	is.NoErr(err)

	is.Equal(keys(t, js), nil) // `nats kv ls` no longer lists it
	e, live, err = s.Latest(ctx, "/azure/dud/")
	is.NoErr(err)
	is.True(!live) // a memo is no live record
	is.Equal(e.Revision, rev2)
	is.Equal(e.Record.Level, 2) // the memo survives
	natstest.Eventually(t, 2*time.Second, func() bool {
		last, _ := ev.last("/azure/dud/")
		return last.Entry == nil && last.Memo != nil && last.Memo.Level == 2
	}, "watchers get the memo")

	_, err = s.Update(ctx, record("/azure/dud/", time.Now().Add(time.Hour)), rev2)
	is.NoErr(err) // a new disable over the memo, at its revision
}

func TestRestartedWatcherReadsMemosWithTheCurrentRecords(t *testing.T) {
	is := is.New(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := open(t, natstest.JetStream(t, natstest.Start(t)))
	rev, err := s.Update(ctx, record("/a/", time.Now().Add(time.Hour)), 0)
	is.NoErr(err)
	_, err = s.Release(ctx, broker.Record{Router: "/a/", Failures: 2}, rev)
	is.NoErr(err)
	var ev events
	watch(t, ctx, s, ev.add)
	last, ok := ev.last("/a/")
	if !ok || last.Memo == nil {
		t.Fatalf("the watcher heard %+v (any: %v) of /a/, not its memo", last, ok)
	}
	is.Equal(last.Memo.Failures, 2) // a replica that starts now still knows the count
}

func TestJanitorKeepsTheBackoffLevelWhenItDeletesAnExpiredRecord(t *testing.T) {
	is := is.New(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	js := natstest.JetStream(t, natstest.Start(t))
	plainBucket(t, js)
	s, err := kv.Open(ctx, js, kv.Config{Bucket: "health", Owner: "test", Linger: 300 * time.Millisecond})
	is.NoErr(err)
	t.Cleanup(s.Close)
	watch(t, ctx, s, func(broker.Event) {})
	r := record("/a/", time.Now().Add(200*time.Millisecond))
	r.Level = 2
	_, err = s.Update(ctx, r, 0)
	is.NoErr(err)
	natstest.Eventually(t, 5*time.Second, func() bool { return len(keys(t, js)) == 0 }, "janitor deletes after Until and the linger")
	is.True(!time.Now().Before(r.Until.Add(300 * time.Millisecond))) // not before
	e, live, err := s.Latest(ctx, "/a/")
	is.NoErr(err)
	is.True(!live) // the janitor deleted the record
	is.Equal(e.Record.Level, 2)
}

// A watcher whose context ended has deleted its consumer on the server by
// the time its stop returns, so that a connection closed right after
// leaves nothing behind. nats.go, left to stop a watcher whose context
// ended, would do it from a goroutine of its own, which closing the
// connection cuts off; the server then keeps the consumer until it has
// been idle for seconds.
func TestAStoppedWatcherHasDeletedItsConsumer(t *testing.T) {
	is := is.New(t)
	srv := natstest.Start(t)
	check := natstest.JetStream(t, srv)
	open(t, check) // the bucket, made once
	// The deletion raced the closing: without the fix, some of ten lose.
	for range 10 {
		nc := natstest.Connect(t, srv)
		js, err := jetstream.New(nc)
		is.NoErr(err)
		s, err := kv.Open(context.Background(), js, kv.Config{Bucket: "health", Owner: "test"})
		is.NoErr(err)
		ctx, cancel := context.WithCancel(context.Background())
		stop, err := s.Watch(ctx, func(broker.Event) {})
		is.NoErr(err)
		cancel() // as a replica's context ends when it stops
		stop()
		s.Close()
		nc.Close()
		stream, err := check.Stream(context.Background(), "KV_health")
		is.NoErr(err)
		info, err := stream.Info(context.Background())
		is.NoErr(err)
		is.Equal(info.State.Consumers, 0) // the watcher's consumer is gone
	}
}
