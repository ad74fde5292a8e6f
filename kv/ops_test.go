package kv_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/kv"
)

func TestPutReplacesWhateverTheKeyHolds(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		before func(is *is.I, s *kv.Store, b func(string, []byte))
	}{
		{"nothing", func(*is.I, *kv.Store, func(string, []byte)) {}},
		{"a live automatic record", func(is *is.I, s *kv.Store, _ func(string, []byte)) {
			_, err := s.Create(ctx, record("/azure/dud/", time.Now().Add(time.Hour)))
			is.NoErr(err)
		}},
		{"a deleted record", func(is *is.I, s *kv.Store, _ func(string, []byte)) {
			_, err := s.Create(ctx, record("/azure/dud/", time.Now().Add(time.Hour)))
			is.NoErr(err)
			_, err = s.Delete(ctx, "/azure/dud/", 0)
			is.NoErr(err)
		}},
		{"an unreadable record", func(_ *is.I, _ *kv.Store, put func(string, []byte)) {
			put("/azure/dud/", []byte("{not json"))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			is := is.New(t)
			js := natstest.JetStream(t, natstest.Start(t))
			s := open(t, js)
			b, err := js.KeyValue(ctx, "health")
			is.NoErr(err)
			tc.before(is, s, func(k string, v []byte) { _, err := b.Put(ctx, k, v); is.NoErr(err) })

			rev, err := s.Put(ctx, manual("/azure/dud/", time.Time{}))
			is.NoErr(err)
			got, err := s.Get(ctx, "/azure/dud/")
			is.NoErr(err)
			is.Equal(got.Revision, rev)
			is.True(got.Record.Manual)                 // the manual record is in force
			is.Equal(got.Record.Reason, "maintenance") // with its reason
			is.True(got.Record.Until.IsZero())         // until deleted
		})
	}
}

func TestPutMakesAStaleAutomaticUpdateFail(t *testing.T) {
	is := is.New(t)
	ctx := context.Background()
	s := open(t, natstest.JetStream(t, natstest.Start(t)))
	rev, err := s.Create(ctx, record("/azure/dud/", time.Now().Add(time.Hour)))
	is.NoErr(err)
	_, err = s.Put(ctx, manual("/azure/dud/", time.Time{}))
	is.NoErr(err)
	_, err = s.Update(ctx, record("/azure/dud/", time.Now().Add(time.Hour)), rev)
	is.True(errors.Is(err, kv.ErrConflict)) // automatic logic cannot overwrite the manual record
	got, err := s.Get(ctx, "/azure/dud/")
	is.NoErr(err)
	is.True(got.Record.Manual) // the manual record stays
}

func TestPutWithoutUntilStaysAndWithUntilExpires(t *testing.T) {
	is := is.New(t)
	ctx := context.Background()
	js := natstest.JetStream(t, natstest.Start(t))
	s := open(t, js)
	is.Equal(s.Mode(), kv.ModeTTL)
	// The automatic record it replaces carried a short TTL; the manual one
	// must not inherit it.
	replacedUntil := time.Now().Add(time.Second)
	_, err := s.Create(ctx, record("/azure/gpt4/", replacedUntil))
	is.NoErr(err)
	_, err = s.Put(ctx, manual("/azure/gpt4/", time.Time{}))
	is.NoErr(err)
	_, err = s.Put(ctx, manual("/azure/dud/", time.Now().Add(time.Second)))
	is.NoErr(err)

	natstest.Eventually(t, 5*time.Second, func() bool {
		ks := keys(t, js)
		return len(ks) == 1 && ks[0] == "/azure/gpt4/"
	}, "the timed manual record expires by its TTL and the other stays")
	// Expiry reaches the server within milliseconds of a TTL; a second past
	// the replaced record's is ample.
	for time.Now().Before(replacedUntil.Add(time.Second)) {
		is.Equal(keys(t, js), []string{"/azure/gpt4/"}) // the manual record without until stays
		time.Sleep(20 * time.Millisecond)
	}
}

func TestPutRefusesAnInvalidKey(t *testing.T) {
	is := is.New(t)
	s := open(t, natstest.JetStream(t, natstest.Start(t)))
	for _, k := range []string{"", "a b", ".a", "a.", "a..b", "a*", "a>"} {
		_, err := s.Put(context.Background(), manual(k, time.Time{}))
		is.True(err != nil) // refused before anything is written
	}
}

func TestScanListsEveryKeyIncludingUnreadableOnes(t *testing.T) {
	is := is.New(t)
	ctx := context.Background()
	js := natstest.JetStream(t, natstest.Start(t))
	s := open(t, js)
	b, err := js.KeyValue(ctx, "health")
	is.NoErr(err)
	_, err = s.Create(ctx, record("/a/1/", time.Now().Add(time.Hour)))
	is.NoErr(err)
	badRev, err := b.Put(ctx, "/a/2/", []byte(`{"v":99}`))
	is.NoErr(err)
	_, err = s.Create(ctx, record("/a/3/", time.Now().Add(time.Hour)))
	is.NoErr(err)
	_, err = s.Delete(ctx, "/a/3/", 0)
	is.NoErr(err)

	got, err := s.Scan(ctx)
	is.NoErr(err)
	is.Equal(len(got), 2) // the deleted key is not listed
	is.Equal(got[0].Router, "/a/1/")
	is.NoErr(got[0].Err)
	is.Equal(got[0].Entry.Record.Status, 502)
	is.Equal(got[1].Router, "/a/2/")
	is.True(got[1].Err != nil)              // unreadable, and said so
	is.Equal(got[1].Entry.Revision, badRev) // with its revision
}

func TestScanOfAnEmptyBucketIsEmpty(t *testing.T) {
	is := is.New(t)
	s := open(t, natstest.JetStream(t, natstest.Start(t)))
	got, err := s.Scan(context.Background())
	is.NoErr(err)
	is.Equal(len(got), 0)
}
