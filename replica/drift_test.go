package replica_test

import (
	"bytes"
	"context"
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/kv"
	"github.com/gecholog/broker/ops"
	"github.com/gecholog/broker/replica"
	"github.com/gecholog/broker/statuspage"
)

// Drift, end to end: replicas tell each other the revision they run, and
// `broker status`, the status page and /metrics show it.

// fleetStatus is `broker status` of the replicas' bucket on url: the
// table, and the replicas as `status --replicas --json` lists them.
type fleetStatus struct {
	table    string
	replicas []replica.ReplicaRevision
}

func statusOf(t *testing.T, url string) fleetStatus {
	t.Helper()
	tgt := ops.Target{NATS: natsconn.Settings{Servers: url}, Bucket: replica.DefaultBucket, Pools: broker.DefaultPools()}
	var table, js bytes.Buffer
	if err := ops.Status(t.Context(), tgt, ops.StatusOptions{}, &table); err != nil {
		t.Fatalf("broker status: %v", err)
	}
	if err := ops.Status(t.Context(), tgt, ops.StatusOptions{Replicas: true, JSON: true}, &js); err != nil {
		t.Fatalf("broker status --replicas --json: %v", err)
	}
	st := fleetStatus{table: table.String()}
	if err := json.Unmarshal(js.Bytes(), &st.replicas); err != nil {
		t.Fatalf("status --replicas --json printed %q: %v", js.String(), err)
	}
	return st
}

// line is the replicas section's line for id, its fields joined by one
// space; "" when there is none.
func (s fleetStatus) line(id string) string {
	_, section, _ := strings.Cut(s.table, "\nREPLICA ")
	for l := range strings.Lines(section) {
		if f := strings.Fields(l); len(f) > 0 && f[0] == id {
			return strings.Join(f, " ")
		}
	}
	return ""
}

// shows reports whether the replicas section has a line for each id that
// starts with it and want, and the --replicas --json list has each id
// with its revision rev and a drift that starts with drift.
func (s fleetStatus) shows(want string, rev uint64, drift string, ids ...string) bool {
	for _, id := range ids {
		if !strings.HasPrefix(s.line(id), id+" "+want) {
			return false
		}
		found := false
		for _, r := range s.replicas {
			found = found || (r.ID == id && r.Revision != nil && *r.Revision == rev && strings.HasPrefix(r.Drift, drift) && (drift != "" || r.Drift == ""))
		}
		if !found {
			return false
		}
	}
	return true
}

// awaitStatus waits until cond holds of `broker status`, and returns it.
func awaitStatus(t *testing.T, url string, cond func(fleetStatus) bool, what string) fleetStatus {
	t.Helper()
	var st fleetStatus
	natstest.Eventually(t, 10*time.Second, func() bool {
		st = statusOf(t, url)
		return cond(st)
	}, "broker status shows %s; it shows:\n%s\n%+v", what, &st.table, &st.replicas)
	return st
}

// listener is the address replica i's log says its listener has.
func (rs *replicaSet) listener(t *testing.T, i int) string {
	t.Helper()
	m := regexp.MustCompile(`"msg":"metrics listening","addr":"([^"]+)"`).FindStringSubmatch(rs.logs[i].String())
	if m == nil {
		t.Fatalf("replica-%d logged no listener address", i+1)
	}
	return m[1]
}

// pageFleet is the fleet as the status page at addr shows it.
func pageFleet(t *testing.T, addr string) statuspage.Fleet {
	t.Helper()
	var s statuspage.Snapshot
	if err := json.Unmarshal([]byte(get(t, "http://"+addr+"/status.json")), &s); err != nil {
		t.Fatalf("decode /status.json: %v", err)
	}
	return s.Fleet
}

// pageReplica is replica id as f lists it; the zero Replica when it does
// not.
func pageReplica(f statuspage.Fleet, id string) statuspage.Replica {
	for _, r := range f.Replicas {
		if r.ID == id {
			return r
		}
	}
	return statuspage.Replica{}
}

func TestStatusShowsEveryReplicasRevisionANewOneAndARefusal(t *testing.T) {
	t.Parallel() // waits on the fleet more than it computes
	is := is.New(t)
	s := startConfigServer(t)
	rs := runReplicas(t, replica.Config{FleetConfig: true, NATS: natsconn.Settings{Servers: s.url}, Policy: minute, MetricsAddr: "127.0.0.1:0"}, 2)

	// Two replicas on the same revision are shown alike.
	st := awaitStatus(t, s.url, func(st fleetStatus) bool {
		return st.shows("1 in step", 1, "", "replica-1", "replica-2")
	}, "both replicas on revision 1")
	says(t, "broker status", st.table, "configuration: every replica heard runs revision 1, the newest in bucket gl_broker_config")
	is.Equal(len(st.replicas), 2) // the two replicas, no more

	// A new revision: status shows both on it.
	rev := s.write(t, onePool("/azure/x/"), "alice")
	st = awaitStatus(t, s.url, func(st fleetStatus) bool {
		return st.shows(strconv.FormatUint(rev, 10)+" in step", rev, "", "replica-1", "replica-2")
	}, "both replicas on the new revision")
	neverSays(t, "broker status", st.table, "DRIFT")
	// The routers shown are the revision's, which the replicas run, not
	// the default pool the status command itself was given no file for.
	says(t, "broker status", st.table, "pools: revision "+strconv.FormatUint(rev, 10)+" of the fleet's configuration (gl_broker_config), which the replicas run")
	says(t, "broker status", st.table, "/azure/  /azure/x/")
	neverSays(t, "broker status", st.table, "/azure/gpt4/")

	// A revision written by hand that no replica can read: each keeps
	// the last good one and status says each refused it, and why.
	kvb, err := s.js.KeyValue(context.Background(), kv.ConfigBucket(replica.DefaultBucket))
	is.NoErr(err)
	bad, err := kvb.Put(context.Background(), kv.ConfigKey, []byte(`{"version":1,"pools":[{"ingress":"/azure/","routers":[{"path":"/azure/z/","weight":"NaN"}]}]}`))
	is.NoErr(err)
	refused := "refused revision " + strconv.FormatUint(bad, 10) + ": pools.routers.weight"
	st = awaitStatus(t, s.url, func(st fleetStatus) bool {
		return st.shows(strconv.FormatUint(rev, 10)+" DRIFT: "+refused, rev, refused, "replica-1", "replica-2")
	}, "each replica refusing the revision written by hand")
	t.Logf("broker status:\n%s", st.table)
	says(t, "broker status", st.table, "configuration: DRIFT: 2 of 2 replicas out of step with revision "+strconv.FormatUint(bad, 10)+", the newest in bucket gl_broker_config")

	// The status page of each shows both replicas, each refusing it.
	for i := range rs.fleet.Replicas {
		addr := rs.listener(t, i)
		var f statuspage.Fleet
		natstest.Eventually(t, 5*time.Second, func() bool {
			f = pageFleet(t, addr)
			return strings.HasPrefix(pageReplica(f, "replica-1").Refused, refused) && strings.HasPrefix(pageReplica(f, "replica-2").Refused, refused)
		}, "the page of replica-%d shows both refusing revision %d: %+v", i+1, bad, &f)
		is.Equal(f.Drift, 2)                                    // both out of step
		is.True(pageReplica(f, rs.fleet.Replicas[i].ID()).This) // the page's own replica is marked
		is.Equal(*pageReplica(f, "replica-1").Revision, rev)    // each on the last good revision
		is.Equal(*pageReplica(f, "replica-2").Revision, rev)
	}
	// /metrics counts the replicas on each revision, and those out of step.
	metrics := get(t, "http://"+rs.listener(t, 0)+"/metrics")
	says(t, "/metrics", metrics, `broker_config_replicas{revision="`+strconv.FormatUint(rev, 10)+`"} 2`)
	says(t, "/metrics", metrics, "broker_config_drift_replicas 2")
	says(t, "/metrics", metrics, "broker_config_revision "+strconv.FormatUint(rev, 10)) // its own, as before
}

func TestAReplicaOnAnotherRevisionShowsAsDrift(t *testing.T) {
	t.Parallel() // waits on the fleet more than it computes
	is := is.New(t)
	s := startConfigServer(t)
	rs := runReplicas(t, replica.Config{FleetConfig: true, NATS: natsconn.Settings{Servers: s.url}, Policy: minute, MetricsAddr: "127.0.0.1:0"}, 1)
	// One that does not follow the fleet's configuration runs revision 0,
	// its own settings.
	_, stop := startReplica(t, replica.Config{ID: "replica-own", NATS: natsconn.Settings{Servers: s.url}, Policy: minute, Logger: jsonLogger(&syncBuffer{})})
	defer stop()

	st := awaitStatus(t, s.url, func(st fleetStatus) bool {
		return st.shows("1 in step", 1, "", "replica-1") && st.shows("0 DRIFT: behind: runs revision 0, not 1", 0, "behind", "replica-own")
	}, "replica-own behind, replica-1 in step")
	t.Logf("broker status:\n%s", st.table)
	says(t, "broker status", st.table, "configuration: DRIFT: 1 of 2 replicas out of step with revision 1, the newest in bucket gl_broker_config; 1 replica on revision 0, 1 on revision 1")

	// The page shows the other replica and its drift.
	addr := rs.listener(t, 0)
	var f statuspage.Fleet
	natstest.Eventually(t, 5*time.Second, func() bool {
		f = pageFleet(t, addr)
		return f.Drift == 1 && strings.HasPrefix(pageReplica(f, "replica-own").Drift, "behind")
	}, "the page shows replica-own behind: %+v", &f)
	is.Equal(*pageReplica(f, "replica-own").Revision, uint64(0))
	is.Equal(pageReplica(f, "replica-1").Drift, "") // in step
}

func TestWithoutAConfigurationBucketStatusSaysNothingOfIt(t *testing.T) {
	t.Parallel() // waits on the fleet more than it computes
	s := natstest.Start(t)
	runReplicas(t, replica.Config{NATS: natsconn.Settings{Servers: s.ClientURL()}, Policy: minute}, 2)
	st := awaitStatus(t, s.ClientURL(), func(st fleetStatus) bool {
		return st.shows("0 in step", 0, "", "replica-1", "replica-2")
	}, "both replicas on revision 0, in step")
	says(t, "broker status", st.table, "configuration: every replica heard runs revision 0: its own pools and settings, no configuration bucket")
	neverSays(t, "broker status", st.table, kv.ConfigBucket(replica.DefaultBucket))
}

func TestAForgedRevisionIsShownBoundedAndChangesNothingAReplicaRuns(t *testing.T) {
	t.Parallel() // waits on the fleet more than it computes
	is := is.New(t)
	s := startConfigServer(t)
	rs := runReplicas(t, replica.Config{FleetConfig: true, NATS: natsconn.Settings{Servers: s.url}, Policy: minute, MetricsAddr: "127.0.0.1:0"}, 1)

	// Anyone who may publish on the stats subject tells a revision no
	// bucket has, with a refusal of 100 kB that would reverse the text.
	nc := natstest.ConnectURL(t, s.url)
	forged, _ := json.Marshal(replica.StatsMessage{ID: "forged", At: time.Now(),
		Config: &replica.ConfigTold{Revision: 1 << 40, Refused: "\u202e" + strings.Repeat("x", 100_000)}})
	// And a name longer than any replica may have, told first each time.
	long := strings.Repeat("n", replica.MaxID+1)
	named, _ := json.Marshal(replica.StatsMessage{ID: long, At: time.Now(), Config: &replica.ConfigTold{Revision: 1}})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			_ = nc.Publish(replica.StatsSubject(replica.DefaultBucket), named)
			_ = nc.Publish(replica.StatsSubject(replica.DefaultBucket), forged)
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	defer func() { cancel(); <-done }()

	st := awaitStatus(t, s.url, func(st fleetStatus) bool { return st.line("forged") != "" && st.line("replica-1") != "" }, "the forged replica")
	line := st.line("forged")
	says(t, "the forged replica's line", line, `DRIFT: \u202exxx`)           // the override shown escaped
	says(t, "the forged replica's line", line, "… [99801 more bytes]")       // and cut
	says(t, "replica-1's line", st.line("replica-1"), "replica-1 1 in step") // held to the bucket's revision, not the forged one
	is.Equal(len(st.replicas), 2)                                            // the long name, told before, was dropped

	addr := rs.listener(t, 0)
	var f statuspage.Fleet
	natstest.Eventually(t, 5*time.Second, func() bool {
		f = pageFleet(t, addr)
		return pageReplica(f, "forged").Revision != nil
	}, "the page shows the forged replica: %+v", &f)
	is.Equal(len(f.Replicas), 2) // the page keeps no replica by the long name either
	r := pageReplica(f, "forged")
	is.True(len(r.Refused) < 300)                               // cut
	is.True(strings.HasPrefix(r.Refused, `\u202exxx`))          // and escaped
	is.Equal(rs.fleet.Replicas[0].Config().Revision, uint64(1)) // what the replica runs is the bucket's
}
