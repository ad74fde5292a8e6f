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

// TestANodesCopyListsWhatScanLists reads the bucket with one direct get,
// as `broker status` does through a server whose bucket has no leader,
// and finds what Scan finds through the leader: live records, unreadable
// ones and keys the KV API refuses, without the deleted ones.
func TestANodesCopyListsWhatScanLists(t *testing.T) {
	is := is.New(t)
	ctx := context.Background()
	srv := natstest.Start(t)
	nc := natstest.Connect(t, srv)
	js := natstest.JetStream(t, srv)
	s := open(t, js)

	empty, err := kv.ReadNodeCopy(ctx, nc, "health")
	is.NoErr(err)                  // an empty bucket is no failure
	is.Equal(len(empty.Listed), 0) // and lists nothing

	_, err = s.Create(ctx, record("/azure/gpt4/", time.Now().Add(time.Hour)))
	is.NoErr(err)
	_, err = s.Create(ctx, record("/azure/gone/", time.Now().Add(time.Hour)))
	is.NoErr(err)
	_, err = s.Delete(ctx, "/azure/gone/", 0)
	is.NoErr(err)
	b, err := js.KeyValue(ctx, "health")
	is.NoErr(err)
	_, err = b.Put(ctx, "/azure/dud/", []byte("{not json"))
	is.NoErr(err)
	_, err = nc.Request("$KV.health.evil!key", encode(t, record("evil!key", time.Now().Add(time.Hour))), time.Second)
	is.NoErr(err)

	scanned, err := s.Scan(ctx)
	is.NoErr(err)
	c, err := kv.ReadNodeCopy(ctx, nc, "health")
	is.NoErr(err)
	is.Equal(len(scanned), 3)             // the live, the unreadable and the refused key
	is.Equal(len(c.Listed), len(scanned)) // as many keys as Scan lists
	for i, l := range c.Listed {
		w := scanned[i]
		is.Equal(l.Router, w.Router)                 // the same keys in the same order
		is.Equal(l.Entry.Revision, w.Entry.Revision) // at the same revisions
		is.Equal(l.Err != nil, w.Err != nil)         // unreadable alike
		is.Equal(errors.Is(l.Err, kv.ErrInvalidKey), errors.Is(w.Err, kv.ErrInvalidKey))
		is.True(l.Entry.Record.Until.Equal(w.Entry.Record.Until)) // the same record
	}
	st, err := js.Stream(ctx, "KV_health")
	is.NoErr(err)
	is.Equal(c.Revision, st.CachedInfo().State.LastSeq)                 // the last revision the copy holds, the delete's included
	is.True(!c.Changed.IsZero() && time.Since(c.Changed) < time.Minute) // when the newest change was written
}

// TestANodesCopyOfABucketThatIsNotThereIsAnError says so in one line.
func TestANodesCopyOfABucketThatIsNotThereIsAnError(t *testing.T) {
	is := is.New(t)
	srv := natstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := kv.ReadNodeCopy(ctx, natstest.Connect(t, srv), "nothere")
	is.True(errors.Is(err, kv.ErrNodeCopy)) // the copy could not be read
	t.Log(err)
}
