package replica_test

// Bucket writes during a real NATS outage, in every mode: the server is
// stopped and started again on the same port and store, as a restart of
// gecholog's NATS would.

import (
	"context"
	"testing"
	"time"

	"github.com/matryer/is"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/replica"
)

// outage is replicas on a server the test stops and starts again.
type outage struct {
	*replicaSet
	mode  serverMode
	port  int
	store string
	srv   testServer
}

func startOutage(t *testing.T, m serverMode, n int, policy broker.Policy) *outage {
	t.Helper()
	o := &outage{mode: m, port: freePort(t), store: t.TempDir()}
	o.srv = m.start(t, onPort(o.port), natstest.WithStoreDir(o.store))
	if m.plain {
		js, err := jetstream.New(natstest.ConnectURL(t, o.srv.url))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "gl_broker"}); err != nil {
			t.Fatal(err)
		}
	}
	o.replicaSet = runReplicas(t, replica.Config{NATS: natsconn.Settings{Servers: o.srv.url}, Policy: policy}, n)
	return o
}

// down stops the server and waits until every replica has lost it.
func (o *outage) down(t *testing.T) {
	t.Helper()
	o.srv.shutdown()
	o.awaitDisconnected(t, 5*time.Second)
}

// up starts the server again on the same port and store, and returns the
// bucket through a new connection.
func (o *outage) up(t *testing.T) jetstream.KeyValue {
	t.Helper()
	o.srv = o.mode.start(t, onPort(o.port), natstest.WithStoreDir(o.store))
	// Cleanups run last first: the replicas stop before this server does.
	t.Cleanup(o.stop)
	js, err := jetstream.New(natstest.ConnectURL(t, o.srv.url))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	bucket, err := js.KeyValue(ctx, "gl_broker")
	if err != nil {
		t.Fatal(err)
	}
	return bucket
}

func TestABucketWriteThatFailsDuringANATSOutageIsRetriedUntilItLands(t *testing.T) {
	t.Parallel() // waits on the fleet more than it computes
	const router = "/azure/dud/"
	eachMode(t, serverModes(), func(t *testing.T, m serverMode) {
		is := is.New(t)
		o := startOutage(t, m, 2, broker.Policy{DisabledTime: time.Minute})
		o.down(t)
		reported := time.Now()
		o.replicas[0].Report([]byte(router), 502, 0)
		is.Equal(o.replicas[0].Phase(router), broker.Disabled) // the replica that saw it avoids the router at once
		is.Equal(o.replicas[1].Phase(router), broker.Enabled)  // the other cannot know yet
		natstest.Eventually(t, 15*time.Second, func() bool { return o.replicas[0].Stats().KVErrors > 0 },
			"a write attempt fails while the server is away")
		t.Logf("a write attempt failed %v after the report", time.Since(reported).Round(time.Millisecond))
		back := time.Now()
		bucket := o.up(t)
		var r broker.Record
		natstest.Eventually(t, 10*time.Second, func() bool {
			var live bool
			r, live = readRecord(t, bucket, router)
			return live
		}, "the record lands once the server is back")
		t.Logf("landed %v after the server was back", time.Since(back).Round(time.Millisecond))
		is.Equal(r.By, "replica-1")
		is.True(r.At.Before(back)) // the disable decided during the outage
		is.Equal(r.Until.Sub(r.At), time.Minute)
		o.every(t, 10*time.Second, phaseIs(router, broker.Disabled), "disabled") // and the other replica hears of it
	})
}

// TestABucketWriteOfADisableLongerThanDisabledTimeIsRetriedUntilThatDisableEnds:
// "retried until the disable would have ended" holds for a disable that
// lasts longer than DISABLED_TIME too (a longer Retry-After, a backoff
// level): it lands when the server is back after more than DISABLED_TIME.
func TestABucketWriteOfADisableLongerThanDisabledTimeIsRetriedUntilThatDisableEnds(t *testing.T) {
	t.Parallel() // waits on the fleet more than it computes
	const router = "/azure/dud/"
	const disabled = 2 * time.Second
	eachMode(t, serverModes(), func(t *testing.T, m serverMode) {
		is := is.New(t)
		o := startOutage(t, m, 2, broker.Policy{DisabledTime: disabled})
		o.down(t)
		reported := time.Now()
		// The upstream asks for 20 s; the policy caps it at 8 × DisabledTime.
		o.replicas[0].Report([]byte(router), 503, 20*time.Second)
		is.Equal(o.replicas[0].Phase(router), broker.Disabled)
		natstest.Eventually(t, 15*time.Second, func() bool { return o.replicas[0].Stats().KVErrors > 0 },
			"a write attempt fails while the server is away")
		// The outage outlasts DisabledTime, not the disable: a wait that
		// sets up the scenario, not one for something to happen.
		time.Sleep(time.Until(reported.Add(disabled + time.Second)))
		bucket := o.up(t)
		var r broker.Record
		natstest.Eventually(t, 10*time.Second, func() bool {
			var live bool
			r, live = readRecord(t, bucket, router)
			return live
		}, "the record lands once the server is back")
		is.Equal(r.By, "replica-1")
		is.Equal(r.Until.Sub(r.At), 8*disabled)
		o.every(t, 10*time.Second, phaseIs(router, broker.Disabled), "disabled") // and the other replica hears of it
	})
}

func TestABucketWriteWhoseDisableEndedDuringANATSOutageIsNeverWrittenLate(t *testing.T) {
	const router, sentinel = "/azure/dud/", "/azure/gpt4/"
	eachMode(t, serverModes(), func(t *testing.T, m serverMode) {
		is := is.New(t)
		o := startOutage(t, m, 2, broker.Policy{DisabledTime: time.Second})
		o.down(t)
		o.replicas[0].Report([]byte(router), 502, 0)
		is.Equal(o.replicas[0].Phase(router), broker.Disabled)
		// The disable ends while the server is still away.
		natstest.Eventually(t, 5*time.Second, func() bool { return o.replicas[0].Phase(router) != broker.Disabled },
			"the disable ends during the outage")
		bucket := o.up(t)
		// A disable decided after the server is back lands: the writer
		// is connected, and any write it still held has had its chance.
		o.replicas[0].Report([]byte(sentinel), 503, 30*time.Second)
		natstest.Eventually(t, 10*time.Second, func() bool {
			_, live := readRecord(t, bucket, sentinel)
			return live
		}, "a new disable lands once the server is back")
		o.stop() // every write finished or abandoned
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		stream, err := natstest.JetStreamURL(t, o.srv.url).Stream(ctx, "KV_gl_broker")
		is.NoErr(err)
		late, err := stream.GetLastMsgForSubject(ctx, "$KV.gl_broker."+router)
		if err == nil {
			t.Logf("written at %v: %s", late.Time, late.Data)
		}
		isErr(t, err, jetstream.ErrMsgNotFound) // the ended disable was never written
		info, err := stream.Info(ctx)
		is.NoErr(err)
		is.Equal(info.State.LastSeq, uint64(1)) // only the new one was
	})
}
