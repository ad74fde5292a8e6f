package replica_test

import (
	"cmp"
	"context"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/kv"
	"github.com/gecholog/broker/replica"
)

// The fleet's configuration, end to end: real servers, real replicas.

func onePool(routers ...string) []broker.Pool {
	p := broker.Pool{Ingress: "/azure/"}
	for _, r := range routers {
		p.Routers = append(p.Routers, broker.Router{Path: r, Weight: 1})
	}
	return []broker.Pool{p}
}

var minute = broker.Policy{DisabledTime: time.Minute}

type configServer struct {
	url string
	js  jetstream.JetStream
	cs  *kv.ConfigStore
}

func startConfigServer(t *testing.T) configServer {
	t.Helper()
	s := natstest.Start(t)
	js := natstest.JetStream(t, s)
	cs, err := kv.OpenConfig(context.Background(), js, kv.ConfigBucket(replica.DefaultBucket), true)
	if err != nil {
		t.Fatal(err)
	}
	return configServer{url: s.ClientURL(), js: js, cs: cs}
}

func (c configServer) latest(t *testing.T) kv.ConfigEntry {
	t.Helper()
	e, err := c.cs.Latest(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func (c configServer) write(t *testing.T, pools []broker.Pool, by string) uint64 {
	t.Helper()
	l := c.latest(t)
	doc := kv.NewFleetConfig(pools, minute, 0)
	doc.By = by
	var prev *kv.FleetConfig
	if l.Revision != 0 {
		prev = &l.Config
	}
	rev, err := c.cs.Write(context.Background(), doc, l.Revision, prev)
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

func routersOf(b *broker.Broker) []string {
	r := b.Routers("/azure/")
	slices.Sort(r)
	return r
}

func TestWhereTheConfigurationComesFrom(t *testing.T) {
	a := onePool("/azure/a/")
	b := onePool("/azure/b/")
	c := onePool("/azure/c/")
	for _, tc := range []struct {
		name    string
		seed    func(t *testing.T, s configServer) // what the bucket holds first
		file    string                             // the replica's pools file; "" none
		pools   []broker.Pool
		given   []string      // settings given besides the file
		policy  broker.Policy // the replica's; zero: minute
		want    []string      // the routers the replica serves
		wantRev uint64        // the revision it runs
		note    string        // in its status
	}{
		{name: "neither: the original's pool seeds the bucket", want: []string{"/azure/dud/", "/azure/gpt35turbo/", "/azure/gpt4/"}, wantRev: 1},
		{name: "file only: the file seeds the bucket", file: "a.json", pools: a, want: []string{"/azure/a/"}, wantRev: 1},
		{name: "bucket only: followed", seed: func(t *testing.T, s configServer) { s.write(t, b, "alice") }, want: []string{"/azure/b/"}, wantRev: 1},
		{name: "both equal: followed, nothing written", seed: func(t *testing.T, s configServer) { s.write(t, a, "alice") }, file: "a.json", pools: a, want: []string{"/azure/a/"}, wantRev: 1},
		{name: "both different, the file edited: the file is written", seed: func(t *testing.T, s configServer) { s.write(t, b, "alice") }, file: "a.json", pools: a, want: []string{"/azure/a/"}, wantRev: 2},
		{name: "both different, the file older: the bucket is followed, loudly", seed: func(t *testing.T, s configServer) {
			// A replica seeded the bucket with file a, then an operator
			// set c.
			doc := kv.NewFleetConfig(a, minute, 0)
			doc.Files = []string{doc.Hash()}
			if _, err := s.cs.Write(context.Background(), doc, 0, nil); err != nil {
				t.Fatal(err)
			}
			s.write(t, c, "alice")
		}, file: "a.json", pools: a, want: []string{"/azure/c/"}, wantRev: 2, note: "this replica's pools file a.json: out of date, following revision 2"},
		{name: "both different, DISABLED_TIME edited: written", seed: func(t *testing.T, s configServer) { s.write(t, b, "alice") },
			given: []string{"DISABLED_TIME"}, pools: b, policy: broker.Policy{DisabledTime: 2 * time.Minute}, want: []string{"/azure/b/"}, wantRev: 2},
		{name: "both different, nothing given: the bucket is followed, not overwritten by the defaults", seed: func(t *testing.T, s configServer) { s.write(t, b, "alice") },
			policy: broker.Policy{DisabledTime: broker.DefaultDisabledTime}, want: []string{"/azure/b/"}, wantRev: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			is := is.New(t)
			s := startConfigServer(t)
			if tc.seed != nil {
				tc.seed(t, s)
			}
			policy := cmp.Or(tc.policy, minute)
			rs := runReplicas(t, replica.Config{FleetConfig: true, NATS: natsconn.Settings{Servers: s.url}, Policy: policy, Pools: tc.pools, PoolsFile: tc.file, Given: tc.given}, 1)
			is.Equal(routersOf(rs.replicas[0]), tc.want) // the routers served
			st := rs.fleet.Replicas[0].Config()
			is.Equal(st.Revision, tc.wantRev)           // the revision run
			is.Equal(s.latest(t).Revision, tc.wantRev)  // and the newest
			is.True(strings.Contains(st.Note, tc.note)) // what it says
			if tc.note != "" {
				is.True(strings.Contains(rs.logs[0].String(), tc.note)) // said in the log too
			}
		})
	}
}

func TestReplicasStartingAtOnceOnAnEmptyBucketWriteItOnce(t *testing.T) {
	is := is.New(t)
	s := startConfigServer(t)
	rs := runReplicas(t, replica.Config{FleetConfig: true, NATS: natsconn.Settings{Servers: s.url}, Policy: minute, Pools: onePool("/azure/a/"), PoolsFile: "a.json"}, 3)
	is.Equal(s.latest(t).Revision, uint64(1)) // one write between them
	for _, r := range rs.fleet.Replicas {
		is.Equal(r.Config().Revision, uint64(1))
	}
}

func TestEveryReplicaFollowsANewRevisionAndRefusesAnInvalidOne(t *testing.T) {
	is := is.New(t)
	s := startConfigServer(t)
	rs := runReplicas(t, replica.Config{FleetConfig: true, NATS: natsconn.Settings{Servers: s.url}, Policy: minute, MetricsAddr: "127.0.0.1:0"}, 3)
	start := time.Now()
	rev := s.write(t, onePool("/azure/x/", "/azure/y/"), "alice")
	rs.every(t, 5*time.Second, func(b *broker.Broker) bool {
		return slices.Equal(routersOf(b), []string{"/azure/x/", "/azure/y/"})
	}, "the new pool")
	took := time.Since(start)
	// How soon is measured by broker-bench -mode reconfig, not here.
	t.Logf("every replica chose by revision %d %v after it was written", rev, took)
	for _, b := range rs.replicas {
		for range 20 {
			id := b.Choose([]byte("/azure/"))
			p := b.Members()[id]
			is.True(p == "/azure/x/" || p == "/azure/y/") // only the new pool's routers
		}
	}

	// An invalid document written by hand: refused, the last good kept.
	kvb, err := s.js.KeyValue(context.Background(), kv.ConfigBucket(replica.DefaultBucket))
	is.NoErr(err)
	bad, err := kvb.Put(context.Background(), kv.ConfigKey, []byte(`{"version":1,"pools":[{"ingress":"/azure/","routers":[{"path":"/azure/z/","weight":"NaN"}]}]}`))
	is.NoErr(err)
	for i, r := range rs.fleet.Replicas {
		// The state is set just before the line is logged.
		natstest.Eventually(t, 5*time.Second, func() bool {
			return r.Config().Refused != "" && strings.Contains(rs.logs[i].String(), "refused a revision")
		}, "replica %d refuses, and says so", i+1)
		is.True(strings.HasPrefix(r.Config().Refused, "refused revision "+strconv.FormatUint(bad, 10)+": pools.routers.weight")) // names revision and field
		is.Equal(r.Config().Revision, rev)                                                                                       // keeps the last good
		is.Equal(routersOf(rs.replicas[i]), []string{"/azure/x/", "/azure/y/"})
		is.Equal(strings.Count(rs.logs[i].String(), "refused a revision"), 1) // one line
	}
	// The status page and /metrics say it.
	m := regexp.MustCompile(`"msg":"metrics listening","addr":"([^"]+)"`).FindStringSubmatch(rs.logs[0].String())
	is.True(m != nil) // the listener's address logged
	addr := m[1]
	page := get(t, "http://"+addr+"/status.json")
	if !strings.Contains(page, `"refused": "refused revision `+strconv.FormatUint(bad, 10)) {
		t.Fatalf("the status page does not say the refusal: %s", strings.Join(strings.Fields(page), " ")[:600])
	}
	metrics := get(t, "http://"+addr+"/metrics")
	is.True(strings.Contains(metrics, "broker_config_revision "+strconv.FormatUint(rev, 10))) // the revision run
	is.True(strings.Contains(metrics, "broker_config_refused 1"))                             // and the refusal

	// Fixed: followed again, the refusal gone.
	rev = s.write(t, onePool("/azure/w/"), "bob")
	rs.every(t, 5*time.Second, func(b *broker.Broker) bool { return slices.Equal(routersOf(b), []string{"/azure/w/"}) }, "the fixed revision")
	for i, r := range rs.fleet.Replicas {
		// The revision is recorded just after the pools are swapped.
		natstest.Eventually(t, 5*time.Second, func() bool { return r.Config().Revision == rev }, "replica %d records revision %d", i+1, rev)
		is.Equal(r.Config().Refused, "") // the refusal gone
	}
}

// Every kind of document a replica could misread, written straight to
// the bucket as `nats kv put` would: each refused with one line naming
// revision and why, the last good revision kept and served.
func TestADocumentWrittenByHandThatCouldBeMisreadIsRefusedAndTheLastGoodKept(t *testing.T) {
	is := is.New(t)
	// A server that takes messages of 2 MB, so that the replica, not the
	// server, is what refuses the large one.
	s := natstest.Start(t, func(o *server.Options) { o.MaxPayload = 4 << 20 })
	js := natstest.JetStream(t, s)
	cs, err := kv.OpenConfig(context.Background(), js, kv.ConfigBucket(replica.DefaultBucket), true)
	is.NoErr(err)
	good, err := cs.Write(context.Background(), kv.NewFleetConfig(onePool("/azure/a/"), minute, 0), 0, nil)
	is.NoErr(err)
	rs := runReplicas(t, replica.Config{FleetConfig: true, NATS: natsconn.Settings{Servers: s.ClientURL()}, Policy: minute}, 2)
	kvb, err := js.KeyValue(context.Background(), kv.ConfigBucket(replica.DefaultBucket))
	is.NoErr(err)

	valid := `{"version":1,"pools":[{"ingress":"/azure/","routers":[{"path":"/azure/z/","weight":1}]}],"policy":{"disabled_time":"1m"},"inflight_bound":"5m"}`
	for _, c := range []struct{ name, doc, why string }{
		{"bad JSON", `{"version":1,"pools":[`, "document: not JSON"},
		{"an unknown field", strings.Replace(valid, `"inflight_bound"`, `"weights":"heavy","inflight_bound"`, 1), `"weights": unknown field`},
		{"weight NaN", strings.Replace(valid, `"weight":1`, `"weight":"NaN"`, 1), "pools.routers.weight"},
		{"an empty pool", strings.Replace(valid, `{"path":"/azure/z/","weight":1}`, ``, 1), `pools[0] ("/azure/").routers: empty`},
		{"a newer broker's", strings.Replace(valid, `"version":1`, `"version":2`, 1), "version 2: this broker reads version 1"},
		{"2 MB", valid[:len(valid)-1] + `,"source":"` + strings.Repeat("x", 2<<20) + `"}`, "larger than 1048576"},
	} {
		rev, err := kvb.Put(context.Background(), kv.ConfigKey, []byte(c.doc))
		is.NoErr(err)
		want := "refused revision " + strconv.FormatUint(rev, 10) + ": "
		for i, r := range rs.fleet.Replicas {
			natstest.Eventually(t, 5*time.Second, func() bool {
				return strings.HasPrefix(r.Config().Refused, want) &&
					strings.Contains(rs.logs[i].String(), `keeping the last good one","revision":`+strconv.FormatUint(rev, 10)+`,"error"`)
			}, "replica %d refuses %s, and says so", i+1, c.name)
			is.True(strings.Contains(r.Config().Refused, c.why))       // says why
			is.Equal(r.Config().Revision, good)                        // keeps the last good revision
			is.Equal(routersOf(rs.replicas[i]), []string{"/azure/a/"}) // and serves by it
		}
	}
	for i := range rs.fleet.Replicas {
		is.Equal(strings.Count(rs.logs[i].String(), "refused a revision"), 6) // one line each
	}

	// The key deleted by hand (nats kv del): the last good kept, and said.
	is.NoErr(kvb.Delete(context.Background(), kv.ConfigKey))
	for i, r := range rs.fleet.Replicas {
		natstest.Eventually(t, 5*time.Second, func() bool { return strings.Contains(r.Config().Note, "deleted from the bucket") }, "replica %d says the key was deleted", i+1)
		is.Equal(routersOf(rs.replicas[i]), []string{"/azure/a/"}) // still served
	}
}

func TestTheConfigurationBucketDeletedKeepsTheLastGoodRevisionAndANewBucketIsFollowed(t *testing.T) {
	is := is.New(t)
	s := startConfigServer(t)
	rs := runReplicas(t, replica.Config{FleetConfig: true, NATS: natsconn.Settings{Servers: s.url}, Policy: minute, Pools: onePool("/azure/a/")}, 2)
	is.NoErr(s.js.DeleteKeyValue(context.Background(), kv.ConfigBucket(replica.DefaultBucket)))
	for i, r := range rs.fleet.Replicas {
		natstest.Eventually(t, 5*time.Second, func() bool { return strings.Contains(r.Config().Note, "deleted") }, "replica %d says so", i+1)
		is.Equal(routersOf(rs.replicas[i]), []string{"/azure/a/"}) // the last good kept
	}
	// The server may refuse a create that races the delete's clean-up:
	// try until one works.
	natstest.Eventually(t, 5*time.Second, func() bool {
		cs, err := kv.OpenConfig(context.Background(), s.js, kv.ConfigBucket(replica.DefaultBucket), true)
		if err != nil {
			return false
		}
		_, err = cs.Write(context.Background(), kv.NewFleetConfig(onePool("/azure/n/"), minute, 0), 0, nil)
		return err == nil
	}, "a new configuration bucket written")
	rs.every(t, 5*time.Second, func(b *broker.Broker) bool { return slices.Equal(routersOf(b), []string{"/azure/n/"}) }, "the new bucket's pool")
	for i := range rs.logs {
		is.Equal(strings.Count(rs.logs[i].String(), "configuration bucket was deleted"), 1) // said once
	}
}

func TestWithoutJetStreamAReplicaRunsByItsOwnSettingsAndSaysSo(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t, natstest.WithoutJetStream())
	rs := runReplicas(t, replica.Config{FleetConfig: true, NATS: natsconn.Settings{Servers: s.ClientURL()}, Policy: minute, Pools: onePool("/azure/a/")}, 1)
	is.Equal(routersOf(rs.replicas[0]), []string{"/azure/a/"})
	st := rs.fleet.Replicas[0].Config()
	is.Equal(st.Revision, uint64(0))
	is.True(strings.Contains(st.Note, "no JetStream")) // said
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
