package replica_test

// The bucket as the README promises it, on real servers: created in the mode
// the server supports (nats-server 2.10, the version the gecholog container
// ships, has no per-message TTL), an existing bucket never changed, and in
// expiry mode ended records deleted by the other replicas when their
// writer is gone, one delete landing.

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/kv"
	"github.com/gecholog/broker/replica"
)

// janitorGrace is kv's: how long replicas other than the writer wait past
// the time a record's key may go before they delete it themselves.
const janitorGrace = 5 * time.Second

func TestReplicasCreateTheBucketInTheModeTheServerSupports(t *testing.T) {
	for _, tc := range []struct {
		server serverMode
		level  func(int) bool // the account's JetStream API level
	}{
		{serverModes()[0], func(l int) bool { return l >= 1 }}, // 2.15: per-message TTL
		{serverModes()[2], func(l int) bool { return l == 0 }}, // 2.10: none
	} {
		t.Run(tc.server.name, func(t *testing.T) {
			is := is.New(t)
			srv := tc.server.start(t)
			js, err := jetstream.New(natstest.ConnectURL(t, srv.url))
			is.NoErr(err)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			info, err := js.AccountInfo(ctx)
			is.NoErr(err)
			is.True(tc.level(info.API.Level)) // the server is the one the mode is about
			_, err = js.KeyValue(ctx, "gl_broker")
			isErr(t, err, jetstream.ErrBucketNotFound) // a fresh server: no bucket yet

			f := runReplicas(t, replica.Config{NATS: natsconn.Settings{Servers: srv.url}, Policy: broker.Policy{DisabledTime: time.Minute}}, 3)
			for _, r := range f.fleet.Replicas {
				is.Equal(r.Mode(), tc.server.mode) // detected from the server
			}
			bucket, err := js.KeyValue(ctx, "gl_broker")
			is.NoErr(err)
			status, err := bucket.Status(ctx)
			is.NoErr(err)
			stream, err := js.Stream(ctx, "KV_gl_broker")
			is.NoErr(err)
			cfg := stream.CachedInfo().Config
			is.Equal(cfg.Description, replica.BucketDescription)
			if tc.server.mode == "ttl" {
				is.True(status.LimitMarkerTTL() > 0) // limit markers: the server expires keys
				is.Equal(cfg.AllowMsgTTL, true)      // per-message TTL, for the writes' own
			} else {
				is.Equal(status.LimitMarkerTTL(), time.Duration(0)) // no limit markers on 2.10
				is.Equal(cfg.AllowMsgTTL, false)                    // 2.10 has no per-message TTL
				is.Equal(cfg.SubjectDeleteMarkerTTL, time.Duration(0))
			}
		})
	}
}

// TestAnExistingBucketIsNeverChanged gives the replicas a bucket an
// operator made with settings of their own, and finds its configuration
// and its creation time the same after the replicas started on it, wrote
// a disable, ended it, and started again: its configuration, not the
// server's version, decides the mode.
func TestAnExistingBucketIsNeverChanged(t *testing.T) {
	t.Parallel() // waits on the fleet more than it computes
	for _, tc := range []struct {
		name    string
		server  serverMode
		marker  time.Duration // the bucket's LimitMarkerTTL; 0: a plain bucket
		history uint8
		mode    string
	}{
		{"2.15 plain bucket", serverModes()[0], 0, 3, "expiry"}, // the server could do TTLs: the bucket is not upgraded
		// History 1: nats-server 2.15.2 never expires a per-message TTL in a
		// bucket that keeps more (checked: still there after 40 s).
		{"2.15 bucket with limit markers", serverModes()[0], 10 * time.Minute, 1, "ttl"},
		{"2.10 plain bucket", serverModes()[2], 0, 3, "expiry"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			is := is.New(t)
			srv := tc.server.start(t)
			js, err := jetstream.New(natstest.ConnectURL(t, srv.url))
			is.NoErr(err)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
				Bucket: "gl_broker", Description: "the operator's own", History: tc.history, MaxBytes: 1 << 20,
				MaxValueSize: 4096, LimitMarkerTTL: tc.marker,
			})
			is.NoErr(err)
			stream, err := js.Stream(ctx, "KV_gl_broker")
			is.NoErr(err)
			before := stream.CachedInfo()

			policy := broker.Policy{DisabledTime: time.Second, ProbeTimeout: time.Second}
			for run := 1; run <= 2; run++ {
				f := newFleet(t, srv.url, "", false, 2, policy)
				for _, r := range f.fleet.Replicas {
					is.Equal(r.Mode(), tc.mode) // the bucket's mode, run run
				}
				if run == 1 {
					// A disable and its end: a write, and a delete by the
					// janitor (expiry mode) or an expiry (ttl mode).
					f.replicas[0].Report([]byte("/azure/dud/"), 502, 0)
					f.waitRecord(t, "/azure/dud/", time.Second)
					natstest.Eventually(t, 5*time.Second, func() bool {
						_, live := f.record(t, "/azure/dud/")
						return !live
					}, "the record goes")
				}
				f.stop()
			}
			after, err := stream.Info(ctx)
			is.NoErr(err)
			is.True(after.Created.Equal(before.Created)) // never recreated
			is.Equal(after.Config, before.Config)
			is.Equal(after.Config.Description, "the operator's own") // never changed
		})
	}
}

// TestEndedRecordsOfAGoneWriterAreDeletedByOneOtherReplicaAfterTheGrace:
// in expiry mode the replica that wrote a record deletes it when it would
// have expired; when that writer is gone, the others do, after
// janitorGrace, and only one delete lands. The gone writer left two
// records. gpt4's is deleted as it happens: the first delete reaches the
// others and they stand down. dud's deletes go through a proxy that holds
// them until every replica's janitor has sent one, so that the
// compare-and-set alone must keep it to one.
func TestEndedRecordsOfAGoneWriterAreDeletedByOneOtherReplicaAfterTheGrace(t *testing.T) {
	const asItHappens, atOnce = "/azure/gpt4/", "/azure/dud/"
	eachMode(t, expiryModes(), func(t *testing.T, m serverMode) {
		is := is.New(t)
		srv := m.start(t)
		proxy := natstest.StartProxy(t, srv.url)
		// The probe timeout is how long a key outlives its Until.
		policy := broker.Policy{DisabledTime: 3 * time.Second, ProbeTimeout: time.Second}
		f := newFleet(t, srv.url, proxy.ClientURL(), m.plain, 3, policy)
		var writerLog syncBuffer
		w, stopWriter := startReplica(t, replica.Config{NATS: natsconn.Settings{Servers: srv.url}, ID: "writer",
			Policy: policy, Logger: jsonLogger(&writerLog)})
		w.Broker().Report([]byte(atOnce), 502, 0)
		w.Broker().Report([]byte(asItHappens), 502, 0)
		keep := map[string]time.Time{} // when each key may go
		for _, router := range []string{atOnce, asItHappens} {
			r := f.waitRecord(t, router, 2*time.Second)
			is.Equal(r.By, "writer")
			keep[router] = r.Until.Add(policy.ProbeTimeout)
			f.every(t, time.Second, phaseIs(router, broker.Disabled), "disabled")
		}
		written := f.lastSeq(t)
		is.Equal(written, uint64(2))
		stopWriter() // gone before its janitor's time
		if !time.Now().Before(keep[atOnce]) {
			t.Fatalf("the writer took until %v after the key's time to stop; the test needs it gone before", time.Since(keep[atOnce]))
		}
		last := keep[atOnce].Add(janitorGrace + time.Second) // each janitor fires within a second after the grace
		for _, k := range keep {
			last = later(last, k.Add(janitorGrace+time.Second))
		}

		proxy.Hold(func(subject string) bool { return subject == "$KV.gl_broker."+atOnce })
		natstest.Eventually(t, time.Until(last)+2*time.Second, func() bool {
			n, _ := proxy.Holding("$KV.gl_broker." + atOnce)
			return n == len(f.replicas)
		}, "a delete of %s from every replica's janitor", atOnce)
		rec, ok := f.last(t, atOnce)
		is.True(ok && rec.Header.Get("KV-Operation") == "") // none of them has landed yet
		proxy.Release()

		for _, router := range []string{atOnce, asItHappens} {
			var marker *jetstream.RawStreamMsg
			natstest.Eventually(t, time.Until(last)+2*time.Second, func() bool {
				msg, ok := f.last(t, router)
				if ok && msg.Header.Get("KV-Operation") == "DEL" {
					marker = msg
				}
				return marker != nil
			}, "%s is deleted", router)
			is.True(!marker.Time.Before(keep[router].Add(janitorGrace))) // not before the grace period
			memo, err := kv.Decode(router, marker.Data)
			is.NoErr(err)
			is.True(strings.HasPrefix(memo.By, "replica-")) // by one of the others
			is.Equal(memo.Reason, broker.ReasonExpired)
			f.every(t, 2*time.Second, phaseIs(router, broker.Enabled), "enabled")
			t.Logf("%s deleted by %s %v after the key's time", router, memo.By, marker.Time.Sub(keep[router]).Round(time.Millisecond))
		}
		// Once the last janitor could have fired, stop the replicas, which
		// finishes or abandons a delete under way, and count what landed.
		natstest.Eventually(t, time.Until(last)+2*time.Second, func() bool { return time.Now().After(last) }, "the last janitor's time")
		f.stop()
		is.Equal(f.lastSeq(t), written+2) // one delete of each key
	})
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
