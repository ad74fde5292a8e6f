package replica_test

import (
	"bytes"
	"encoding/json"
	"math"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/matryer/is"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/kv"
	"github.com/gecholog/broker/ops"
	"github.com/gecholog/broker/replica"
)

// The bucket is the truth (issue 20): whatever an operator or anyone who
// may publish on the bus does to it, every replica agrees with the bucket
// within a second, and a manual disable or enable issued afterwards holds
// on every replica. The replicas check the bucket once a second; the
// bound here leaves a busy machine room, and each test logs what it took.
const agreeBound = 5 * time.Second

const dud = "/azure/dud/"

// truthFleet is two replicas on an embedded server, and the operator's
// commands against it.
type truthFleet struct {
	*replicaSet
	url    string
	nc     *nats.Conn
	js     jetstream.JetStream
	target ops.Target
}

func startTruthFleet(t *testing.T) *truthFleet {
	t.Helper()
	url := natstest.Start(t).ClientURL()
	f := &truthFleet{url: url, nc: natstest.ConnectURL(t, url)}
	f.js = natstest.JetStreamURL(t, url)
	f.replicaSet = runReplicas(t, replica.Config{NATS: natsconn.Settings{Servers: url}, Policy: broker.Policy{DisabledTime: time.Minute}}, 2)
	f.target = ops.Target{NATS: natsconn.Settings{Servers: url}, Bucket: "gl_broker", Pools: broker.DefaultPools()}
	return f
}

func (f *truthFleet) disable(t *testing.T, d time.Duration) {
	t.Helper()
	var out bytes.Buffer
	if err := ops.DisableRouter(t.Context(), f.target, ops.Disable{Router: dud, For: d, By: "test"}, func(string) string { return "" }, &out); err != nil {
		t.Fatalf("broker disable %s: %v", dud, err)
	}
}

func (f *truthFleet) enable(t *testing.T) {
	t.Helper()
	var out bytes.Buffer
	if err := ops.EnableRouter(t.Context(), f.target, dud, &out); err != nil {
		t.Fatalf("broker enable %s: %v", dud, err)
	}
}

func chooses(router string) func(*broker.Broker) bool {
	return func(b *broker.Broker) bool { return slices.Contains(b.Routers("/azure/"), router) }
}

func avoids(router string) func(*broker.Broker) bool {
	return func(b *broker.Broker) bool { return !slices.Contains(b.Routers("/azure/"), router) }
}

// statusState is the state `broker status --json` shows for router.
func (f *truthFleet) statusState(t *testing.T, router string) string {
	t.Helper()
	var out bytes.Buffer
	if err := ops.Status(t.Context(), f.target, ops.StatusOptions{JSON: true}, &out); err != nil {
		t.Fatalf("broker status --json: %v", err)
	}
	var rows []map[string]any
	if err := json.Unmarshal(out.Bytes(), &rows); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out.String())
	}
	for _, r := range rows {
		if r["router"] == router {
			s, _ := r["state"].(string)
			return s
		}
	}
	return ""
}

// rounds runs manual disables and enables, so that the bucket's revisions
// run well past where a new bucket's start.
func (f *truthFleet) rounds(t *testing.T, n int) {
	t.Helper()
	for range n {
		f.disable(t, time.Minute)
		f.every(t, agreeBound, avoids(dud), "a manual disable")
		f.enable(t)
		f.every(t, agreeBound, chooses(dud), "an enable")
	}
}

// holds checks that a manual disable and then an enable, issued now, hold
// on every replica and in `broker status`.
func (f *truthFleet) holds(t *testing.T) {
	t.Helper()
	f.disable(t, time.Minute)
	f.every(t, agreeBound, avoids(dud), "the manual disable issued afterwards")
	is.New(t).Equal(f.statusState(t, dud), "disabled") // status agrees with the replicas
	f.enable(t)
	f.every(t, agreeBound, chooses(dud), "the enable issued afterwards")
	is.New(t).Equal(f.statusState(t, dud), "enabled") // status agrees with the replicas
}

func TestEveryReplicaFollowsABucketDeletedAndMadeAgain(t *testing.T) {
	t.Parallel() // waits on the fleet more than it computes
	is := is.New(t)
	f := startTruthFleet(t)
	f.rounds(t, 20)
	f.disable(t, time.Minute) // held when the bucket goes
	f.every(t, agreeBound, avoids(dud), "a manual disable")

	is.NoErr(f.js.DeleteKeyValue(t.Context(), "gl_broker")) // `nats kv rm gl_broker -f`
	gone := time.Now()
	// The replicas make it again; the new one holds nothing, so the router
	// is enabled everywhere.
	f.every(t, agreeBound, chooses(dud), "the new, empty bucket's word")
	t.Logf("every replica followed the new bucket %v after the old one was deleted", time.Since(gone).Round(time.Millisecond))
	if time.Since(gone) > 2*time.Second {
		for _, l := range f.logs {
			t.Log(l.String())
		}
	}
	f.holds(t)
}

func TestEveryReplicaFollowsAPurgedStream(t *testing.T) {
	t.Parallel() // waits on the fleet more than it computes
	is := is.New(t)
	f := startTruthFleet(t)
	f.rounds(t, 3)
	f.disable(t, 0) // until enabled: a manual disable with no end
	f.every(t, agreeBound, avoids(dud), "a manual disable")

	stream, err := f.js.Stream(t.Context(), "KV_gl_broker")
	is.NoErr(err)
	is.NoErr(stream.Purge(t.Context())) // $JS.API.STREAM.PURGE.KV_gl_broker
	purged := time.Now()
	f.every(t, agreeBound, chooses(dud), "the purged bucket's word")
	t.Logf("every replica followed the purge %v after it", time.Since(purged).Round(time.Millisecond))
	f.holds(t)
}

// A message on the news subject is a hint to read the bucket, never a
// revision or a record to take.
func TestForgedNewsNeverChangesWhatAReplicaTakesFromTheBucket(t *testing.T) {
	t.Parallel() // waits on the fleet more than it computes
	is := is.New(t)
	f := startTruthFleet(t)
	f.rounds(t, 1)
	rec, err := kv.Encode(broker.Record{Router: dud, Reason: "forged", Manual: true, At: time.Now(), By: "mallory"})
	is.NoErr(err)
	for _, op := range []string{"put", "del"} {
		m := &nats.Msg{Subject: replica.NewsSubject("gl_broker"), Header: nats.Header{}, Data: rec}
		m.Header.Set("Kv-News-Key", dud)
		m.Header.Set("Kv-News-Op", op)
		m.Header.Set("Kv-News-From", "mallory")
		m.Header.Set("Kv-News-Revision", strconv.FormatUint(math.MaxUint64, 10))
		m.Header.Set("Kv-News-Created", time.Now().UTC().Format(time.RFC3339Nano))
		is.NoErr(f.nc.PublishMsg(m))
	}
	is.NoErr(f.nc.Flush())
	// The forged put names a manual disable the bucket does not hold: no
	// replica takes it. Once the replicas have read the bucket on its hint,
	// a real change still reaches them.
	f.holds(t)
	f.every(t, agreeBound, chooses(dud), "the bucket's word after the forgery")
}

// One forged announcement of a disable on its way holds a router out on
// the replicas for a bounded time at most: until the bucket's word (here,
// an operator's enable) or the hold ends.
func TestAForgedAnnouncementIsUndoneByTheBucketsWord(t *testing.T) {
	t.Parallel() // waits on the fleet more than it computes
	is := is.New(t)
	f := startTruthFleet(t)
	rec, err := kv.Encode(broker.Record{Router: dud, Status: 502, Reason: "forged", At: time.Now(), Until: time.Now().Add(time.Hour), By: "mallory"})
	is.NoErr(err)
	m := &nats.Msg{Subject: replica.NewsSubject("gl_broker"), Header: nats.Header{}, Data: rec}
	m.Header.Set("Kv-News-Key", dud)
	m.Header.Set("Kv-News-Op", "pending")
	m.Header.Set("Kv-News-From", "mallory")
	is.NoErr(f.nc.PublishMsg(m))
	f.every(t, agreeBound, avoids(dud), "the forged announcement") // provisional: taken at its word, for now
	// The bucket holds nothing: `broker enable` still tells every replica,
	// and the bucket's newer word ends the announcement well before its
	// 30 s hold.
	f.enable(t)
	f.every(t, agreeBound, chooses(dud), "the enable after the forged announcement")
	f.holds(t)
}
