package replica_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/kv"
	"github.com/gecholog/broker/replica"
)

func TestLocalModeSwitchesToTheBucketWhenJetStreamAppearsAndCarriesDisablesOver(t *testing.T) {
	is := is.New(t)
	port := freePort(t)
	stock := natstest.Start(t, natstest.WithoutJetStream(), onPort(port)) // gecholog's stock config
	var logs syncBuffer
	one, stop := serveOne(t, stock.ClientURL(), &logs)
	defer stop()
	b := one.Broker()
	is.Equal(one.Mode(), "local")

	nc := natstest.Connect(t, stock, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	_, err := nc.Request("coburn.gl.broker", []byte(`{"gl_path":"/azure/dud/","egress_status_code":502}`), 2*time.Second)
	is.NoErr(err)
	is.Equal(b.Phase("/azure/dud/"), broker.Disabled) // disabled in this replica alone

	// The operator enables JetStream and restarts the server.
	stock.Shutdown()
	stock.WaitForShutdown()
	js := natstest.Start(t, onPort(port))
	natstest.Eventually(t, 15*time.Second, func() bool { return one.Mode() == "ttl" }, "the replica attaches to the bucket")

	bucket, err := natstest.JetStream(t, js).KeyValue(context.Background(), "gl_broker")
	is.NoErr(err)
	var r broker.Record
	natstest.Eventually(t, 5*time.Second, func() bool {
		var live bool
		r, live = readRecord(t, bucket, "/azure/dud/")
		return live
	}, "the local disable is carried over") // written in the background
	is.Equal(r.By, "replica-1")
	is.Equal(b.Phase("/azure/dud/"), broker.Disabled)

	// From now on disables are shared.
	natstest.Eventually(t, 5*time.Second, func() bool {
		_, err := nc.Request("coburn.gl.broker", []byte(`{"gl_path":"/azure/gpt4/","egress_status_code":503}`), time.Second)
		return err == nil
	}, "the client reconnects")
	natstest.Eventually(t, 5*time.Second, func() bool {
		_, err := bucket.Get(context.Background(), "/azure/gpt4/")
		return err == nil
	}, "a new disable is written to the bucket")
}

// TestLocalModeSwitchingToABucketThatHoldsARecordLetsTheBucketsRecordWin:
// a replica in local mode disabled two routers on its own; when JetStream
// appears, the bucket already holds an operator's record for one of them.
// That record wins: it is neither overwritten nor joined by the replica's
// own, and the replica follows it. The other disable is carried over.
func TestLocalModeSwitchingToABucketThatHoldsARecordLetsTheBucketsRecordWin(t *testing.T) {
	is := is.New(t)
	port, store := freePort(t), t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The bucket as the operator's JetStream will find it, made ahead in
	// the store by a server on another port.
	prep := natstest.Start(t, natstest.WithStoreDir(store))
	bucket, err := natstest.JetStream(t, prep).CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "gl_broker"})
	is.NoErr(err)
	manual, err := kv.Encode(broker.Record{Router: "/azure/dud/", Manual: true, Reason: "maintenance", At: time.Now(), By: "alice"})
	is.NoErr(err)
	rev, err := bucket.Put(ctx, "/azure/dud/", manual)
	is.NoErr(err)
	prep.Shutdown()
	prep.WaitForShutdown()

	stock := natstest.Start(t, natstest.WithoutJetStream(), onPort(port)) // gecholog's stock config
	var logs syncBuffer
	one, stop := serveOne(t, stock.ClientURL(), &logs)
	defer stop()
	b := one.Broker()
	is.Equal(one.Mode(), "local")
	b.Report([]byte("/azure/dud/"), 502, 0)
	b.Report([]byte("/azure/gpt4/"), 503, 0)
	is.Equal(b.Phase("/azure/dud/"), broker.Disabled) // disabled in this replica alone
	is.Equal(b.Phase("/azure/gpt4/"), broker.Disabled)

	// The operator enables JetStream and restarts the server.
	stock.Shutdown()
	stock.WaitForShutdown()
	js := natstest.Start(t, onPort(port), natstest.WithStoreDir(store))
	// The bucket made without per-message TTL: expiry mode.
	natstest.Eventually(t, 15*time.Second, func() bool { return one.Mode() == "expiry" }, "the replica attaches to the bucket")
	bucket, err = natstest.JetStream(t, js).KeyValue(ctx, "gl_broker")
	is.NoErr(err)
	natstest.Eventually(t, 5*time.Second, func() bool {
		_, live := readRecord(t, bucket, "/azure/gpt4/")
		return live
	}, "the disable the bucket had no record for is carried over")
	natstest.Eventually(t, 5*time.Second, func() bool { return b.Phase("/azure/dud/") == broker.Manual },
		"the replica follows the bucket's record")
	stop() // every carry-over write finished
	e, err := bucket.Get(ctx, "/azure/dud/")
	is.NoErr(err)
	is.Equal(e.Revision(), rev) // the bucket's record was never overwritten
	r, err := kv.Decode("/azure/dud/", e.Value())
	is.NoErr(err)
	is.Equal(r.Manual, true) // the bucket's manual disable
	is.Equal(r.By, "alice")
	g, live := readRecord(t, bucket, "/azure/gpt4/")
	is.True(live) // the carried-over disable of a router the bucket did not hold
	is.Equal(g.By, "replica-1")
}

func TestRequireKVRefusesToStartWithoutJetStream(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t, natstest.WithoutJetStream())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := replica.Run(ctx, replica.Config{NATS: natsconn.Settings{Servers: s.ClientURL()}, RequireKV: true})
	is.True(err != nil)                              // refused
	says(t, "the error", err.Error(), "require-kv")  // names the setting
	says(t, "the error", err.Error(), "jetstream {") // and the fix
	oneLine(t, err)
}

// recreateWithin is how soon a replica creates a deleted bucket again.
// The README says about 10 s: the watcher's ordered consumer is gone with
// the stream, and nats.go notices after two missed heartbeats (5 s each).
const recreateWithin = 12 * time.Second

func TestBucketDeletedAtRuntimeIsRecreatedAndServingNeverStops(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	var logs syncBuffer
	r, stop := serveOne(t, s.ClientURL(), &logs)
	defer stop()
	b := r.Broker()
	nc := natstest.Connect(t, s)
	js, err := jetstream.New(nc)
	is.NoErr(err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// gecholog's request contexts go on throughout, each waiting at most
	// 500 ms (gecholog itself waits 50 ms; this leaves room for -race on a
	// loaded machine).
	load := startCallLoad(t, nc, 2, 500*time.Millisecond)
	load.WaitAnswered(t, time.Time{}, 50, 10*time.Second)

	deleted := time.Now()
	is.NoErr(js.DeleteKeyValue(ctx, "gl_broker"))
	var recreated time.Time
	natstest.Eventually(t, recreateWithin+5*time.Second, func() bool {
		_, err := js.KeyValue(ctx, "gl_broker")
		if err == nil {
			recreated = time.Now()
		}
		return err == nil
	}, "the replica creates the bucket again")
	took := recreated.Sub(deleted)
	// Serving goes on after it too.
	load.WaitAnswered(t, recreated, 50, 10*time.Second)
	answered, failed, gap := servedThroughout(load.Finish(), deleted, recreated)
	t.Logf("bucket created again %v after it was deleted; meanwhile %d calls answered, %d not, at most %v without an answer",
		took.Round(time.Millisecond), answered, len(failed), gap.Round(time.Millisecond))
	is.True(took <= recreateWithin) // as the README says
	is.Equal(failed, []error(nil))  // serving never stopped: every call answered with a router
	is.True(answered >= 100)        // and calls went on throughout
	// A pause between answers with every call answered within its 500 ms
	// is the load generator's, not the replica's: the callers stalled
	// with the machine (1.4 s at a load of 10 on 2 cores). It is logged,
	// not judged.

	_, err = nc.Request("coburn.gl.broker", []byte(`{"gl_path":"/azure/dud/","egress_status_code":502}`), time.Second)
	is.NoErr(err)
	bucket, err := js.KeyValue(ctx, "gl_broker")
	is.NoErr(err)
	natstest.Eventually(t, 10*time.Second, func() bool {
		_, err := bucket.Get(ctx, "/azure/dud/")
		return err == nil
	}, "disables are shared through the new bucket")
	is.Equal(b.Phase("/azure/dud/"), broker.Disabled)
	// The line follows the creation the test saw.
	natstest.Eventually(t, 5*time.Second, func() bool { return strings.Contains(logs.String(), "bucket was deleted; created it again") }, "the line saying so")
	is.Equal(strings.Count(logs.String(), "bucket was deleted; created it again"), 1) // and said so, once
}

func TestARefusedSubscriptionStopsStartupWithOneLine(t *testing.T) {
	is := is.New(t)
	// A user that may use JetStream and inboxes, but not the broker's subject.
	s := natstest.Start(t, func(o *server.Options) {
		o.Users = []*server.User{{Username: "broker", Password: "pw", Permissions: &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: []string{">"}},
			Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>"}},
		}}}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := replica.Run(ctx, replica.Config{NATS: natsconn.Settings{Servers: s.ClientURL(), User: "broker", Password: "pw"}})
	is.True(err != nil) // no replica that never gets a call
	says(t, "the error", err.Error(), `allow the broker's NATS user to subscribe to "coburn.gl.broker broker"`)
	oneLine(t, err)
}
