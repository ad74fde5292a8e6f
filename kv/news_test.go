package kv_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
	"github.com/nats-io/nats.go"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/kv"
)

func TestEveryWriteThatLandsIsToldWithItsRevision(t *testing.T) {
	is := is.New(t)
	srv := natstest.Start(t)
	js := natstest.JetStream(t, srv)
	s := openWithNews(t, js, "replica-1")
	nc := natstest.Connect(t, srv)
	sub, err := nc.SubscribeSync(newsSubject)
	is.NoErr(err)
	// The subscription goes out on its own connection, the writes' news on
	// the store's: the server must know it before the first write, or that
	// news, published once and kept for no one, is missed.
	is.NoErr(nc.Flush())
	ctx := context.Background()

	rec := record("/azure/dud/", time.Now().Add(time.Hour))
	rev, err := s.Update(ctx, rec, 0)
	is.NoErr(err)
	m := nextNews(t, sub)
	is.Equal(m.Header.Get("Kv-News-Op"), "put")
	is.Equal(m.Header.Get("Kv-News-Key"), "/azure/dud/")
	is.Equal(m.Header.Get("Kv-News-From"), "replica-1")
	is.Equal(m.Header.Get("Kv-News-Revision"), itoa(rev))
	got, err := kv.Decode("/azure/dud/", m.Data)
	is.NoErr(err)
	is.Equal(got.Until.Unix(), rec.Until.Unix())

	_, err = s.Update(ctx, rec, 0) // a write the stream refuses is never told
	is.True(err != nil)            // the stream refuses a create over the live key

	rev, err = s.Release(ctx, broker.Record{Router: "/azure/dud/", Level: 2}, rev)
	is.NoErr(err)
	m = nextNews(t, sub)
	is.Equal(m.Header.Get("Kv-News-Op"), "del")
	is.Equal(m.Header.Get("Kv-News-Revision"), itoa(rev))
	memo, err := kv.Decode("/azure/dud/", m.Data)
	is.NoErr(err)
	is.Equal(memo.Level, 2)

	rev, err = s.Put(ctx, broker.Record{Router: "/azure/gpt4/", Manual: true, At: time.Now(), By: "alice"})
	is.NoErr(err)
	m = nextNews(t, sub)
	is.Equal(m.Header.Get("Kv-News-Op"), "put")
	is.Equal(m.Header.Get("Kv-News-Revision"), itoa(rev))

	_, err = s.Delete(ctx, "/azure/gpt4/", 0)
	is.NoErr(err)
	m = nextNews(t, sub)
	is.Equal(m.Header.Get("Kv-News-Op"), "del")

	s.Announce(record("/azure/gpt35turbo/", time.Now().Add(time.Minute)))
	m = nextNews(t, sub)
	is.Equal(m.Header.Get("Kv-News-Op"), "pending")
	is.Equal(m.Header.Get("Kv-News-Revision"), "") // not in the bucket yet

	_, err = sub.NextMsg(100 * time.Millisecond)
	is.True(err != nil) // nothing more was told
}

func TestAWatcherHearsOtherWritersNewsButNotItsOwn(t *testing.T) {
	is := is.New(t)
	srv := natstest.Start(t)
	js := natstest.JetStream(t, srv)
	a := openWithNews(t, js, "replica-a")
	b := openWithNews(t, js, "replica-b")
	var got events
	watch(t, context.Background(), b, got.add)

	a.Announce(record("/azure/dud/", time.Now().Add(time.Minute)))
	natstest.Eventually(t, 2*time.Second, func() bool {
		ev, ok := got.last("/azure/dud/")
		return ok && ev.Provisional && ev.Entry != nil && ev.Entry.Record.Status == 502
	}, "replica-b hears replica-a's announcement")
	b.Announce(record("/azure/gpt4/", time.Now().Add(time.Minute)))
	a.Announce(record("/azure/gpt35turbo/", time.Now().Add(time.Minute))) // after b's, on the same subject
	natstest.Eventually(t, 2*time.Second, func() bool { _, ok := got.last("/azure/gpt35turbo/"); return ok }, "the later news")
	_, own := got.last("/azure/gpt4/")
	is.True(!own) // its own news is not news to it
}

func TestNewsThatIsNotNewsIsIgnored(t *testing.T) {
	srv := natstest.Start(t)
	js := natstest.JetStream(t, srv)
	s := openWithNews(t, js, "replica-1")
	var got events
	watch(t, context.Background(), s, got.add)
	nc := natstest.Connect(t, srv)
	good, err := kv.Encode(record("/azure/dud/", time.Now().Add(time.Minute)))
	if err != nil {
		t.Fatal(err)
	}
	for name, m := range map[string]*nats.Msg{
		"no key":              news("", "pending", "", good),
		"a key no bucket has": news("a b", "pending", "", good),
		"unknown op":          news("/azure/dud/", "frobnicate", "3", good),
		"put without record":  news("/azure/dud/", "put", "3", nil),
		"put without rev":     news("/azure/dud/", "put", "", good),
		"bad revision":        news("/azure/dud/", "put", "x", good),
		"not a record":        news("/azure/dud/", "pending", "", []byte("{")),
		"too large":           news("/azure/dud/", "pending", "", []byte(`{"v":1,"x":"`+strings.Repeat("a", 1<<17)+`"}`)),
	} {
		if err := nc.PublishMsg(m); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	// A good one after all of them: once it is heard, the others were read.
	if err := nc.PublishMsg(news("/azure/gpt4/", "pending", "", good)); err != nil {
		t.Fatal(err)
	}
	natstest.Eventually(t, 2*time.Second, func() bool { _, ok := got.last("/azure/gpt4/"); return ok }, "the good news")
	got.mu.Lock()
	defer got.mu.Unlock()
	is.New(t).Equal(len(got.all), 1) // only the good news was delivered
}

func TestAStoreThatAsksAfterAReconnectHearsWhatWasAnnouncedAndNotWritten(t *testing.T) {
	is := is.New(t)
	srv := natstest.Start(t)
	js := natstest.JetStream(t, srv)
	a := openWithNews(t, js, "replica-a")
	b := openWithNews(t, js, "replica-b")
	watch(t, context.Background(), a, func(broker.Event) {})        // a store listens while it watches
	a.Announce(record("/azure/dud/", time.Now().Add(time.Minute)))  // before b listens: b misses it
	a.Announce(record("/azure/gpt4/", time.Now().Add(time.Minute))) // this one lands
	_, err := a.Update(context.Background(), record("/azure/gpt4/", time.Now().Add(time.Minute)), 0)
	is.NoErr(err)
	a.Announce(record("/azure/gpt35turbo/", time.Now().Add(-time.Second))) // already ended

	var got events
	watch(t, context.Background(), b, got.add)
	b.Resync() // as after a reconnect
	natstest.Eventually(t, 2*time.Second, func() bool {
		ev, ok := got.last("/azure/dud/")
		return ok && ev.Provisional
	}, "replica-a tells the unwritten disable again")
	got.mu.Lock()
	defer got.mu.Unlock()
	for _, ev := range got.all {
		is.True(!(ev.Provisional && ev.Router == "/azure/gpt4/"))       // written: not told again
		is.True(!(ev.Provisional && ev.Router == "/azure/gpt35turbo/")) // ended: not told again
	}
}
