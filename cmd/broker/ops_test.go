package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/gecholog"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/kv"
)

// bucketRecord reads router's record from the bucket, as a replica would.
func bucketRecord(t *testing.T, js jetstream.JetStream, router string) (broker.Entry, error) {
	t.Helper()
	st, err := kv.Open(context.Background(), js, kv.Config{Bucket: "gl_broker", NoCreate: true})
	if err != nil {
		t.Fatalf("open bucket: %v", err)
	}
	defer st.Close()
	return st.Get(context.Background(), router)
}

func TestManualDisableHoldsOnEveryReplicaUntilEnabledByHand(t *testing.T) {
	t.Parallel() // waits out disables, in step with the others
	is := is.New(t)
	const disabledTime = 2 * time.Second
	s := natstest.Start(t)
	replicas := startReplicas(t, s, 2, disabledTime)
	nc := natstest.Connect(t, s)
	js, err := jetstream.New(nc)
	is.NoErr(err)
	ops := env("NATS_URL", s.ClientURL(), "USER", "alice")

	out, _, err := runOp(ops, "disable", "/azure/gpt4/")
	is.NoErr(err)
	saysFirst(t, "the output", out, "disabled /azure/gpt4/ on every replica until enabled by hand; manual, by alice@") // one confirming line
	is.Equal(strings.Count(out, "\n"), 1)
	natstest.Eventually(t, 5*time.Second, func() bool { return choosing(replicas, "/azure/gpt4/") == 0 }, "no replica chooses /azure/gpt4/")

	// Past twice the automatic disabled time, with failure reports reaching
	// both replicas through the bus and directly, the record stays the
	// operator's and no replica chooses the router.
	rec, err := bucketRecord(t, js, "/azure/gpt4/")
	is.NoErr(err)
	report := []byte(`{"gl_path":"/azure/gpt4/","egress_status_code":502}`)
	var direct []*gecholog.Handler // each replica's broker, as its subscription hands it a call
	for _, b := range replicas {
		direct = append(direct, gecholog.NewHandler(b, nil))
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	hold := rec.Record.At.Add(2*disabledTime + 500*time.Millisecond)
	for past := false; !past; <-tick.C {
		past = !time.Now().Before(hold) // the last round checks past the hold, however few came before
		_, err := nc.Request("coburn.gl.broker", report, 2*time.Second)
		is.NoErr(err)
		for _, h := range direct {
			h.Handle(report)
		}
		is.Equal(choosing(replicas, "/azure/gpt4/"), 0) // still disabled on every replica
		got, err := bucketRecord(t, js, "/azure/gpt4/")
		is.NoErr(err)
		is.Equal(got.Revision, rec.Revision) // never overwritten by automatic logic
	}
	is.Equal(choosing(replicas, "/azure/gpt35turbo/"), 2) // the others stay in use

	table, _, err := runOp(ops, "status")
	is.NoErr(err)
	saysFirst(t, "the table", table, "bucket gl_broker on nats://127.0.0.1:") // the header names bucket and server
	is.True(strings.Contains(strings.SplitN(table, "\n", 2)[0], "ttl mode"))  // and the TTL mode
	row := tableRow(table, "/azure/gpt4/")
	says(t, "the row", row, "disabled (manual)")
	says(t, "the row", row, "until enabled by hand")
	says(t, "the row", row, "disabled by hand") // the default reason
	says(t, "the row", row, "alice@")
	says(t, "the row of /azure/gpt35turbo/", tableRow(table, "/azure/gpt35turbo/"), " enabled ")

	got := jsonRow(statusJSON(t, ops), "/azure/gpt4/")
	is.Equal(got["state"], "disabled")
	is.Equal(got["manual"], true)
	is.Equal(got["until"], nil)
	is.Equal(got["left_seconds"], nil)
	is.Equal(got["ingress"], "/azure/")
	saysFirst(t, "by", fmt.Sprint(got["by"]), "alice@") // the operator, at the host

	out, _, err = runOp(ops, "enable", "/azure/gpt4/")
	is.NoErr(err)
	saysFirst(t, "the output", out, "enabled /azure/gpt4/ on every replica; removed the manual disable by alice@")
	natstest.Eventually(t, 5*time.Second, func() bool { return choosing(replicas, "/azure/gpt4/") == 2 }, "both replicas choose /azure/gpt4/ again")

	out, _, err = runOp(ops, "enable", "/azure/gpt4/")
	is.NoErr(err) // enabling an enabled router is no error
	is.Equal(out, "/azure/gpt4/ is already enabled: bucket gl_broker holds no record for it; confirmed by all 2 replicas\n")
}

// TestDisableAndEnableSayOnEveryReplicaWhenEveryReplicaConfirmed runs
// `broker disable` and `broker enable` beside three replicas: each says
// "on every replica" and that all three confirmed, and each replica's
// view does hold the change when the line is printed.
func TestDisableAndEnableSayOnEveryReplicaWhenEveryReplicaConfirmed(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	replicas := startReplicas(t, s, 3, time.Minute)
	ops := env("NATS_URL", s.ClientURL())
	phases := func(router string) []broker.Phase {
		var out []broker.Phase
		for _, b := range replicas {
			out = append(out, b.Phase(router))
		}
		return out
	}

	start := time.Now()
	out, _, err := runOp(ops, "disable", "/azure/gpt4/", "--by", "alice", "--reason", "maintenance")
	is.NoErr(err)
	saysFirst(t, "the output", out, "disabled /azure/gpt4/ on every replica until enabled by hand; manual, by alice: maintenance")
	saysLast(t, "the output", out, "; confirmed by all 3 replicas\n")
	is.Equal(strings.Count(out, "\n"), 1)                                                         // one line
	is.Equal(phases("/azure/gpt4/"), []broker.Phase{broker.Manual, broker.Manual, broker.Manual}) // as confirmed
	t.Logf("disable confirmed by all 3 in %v", time.Since(start).Round(time.Millisecond))

	start = time.Now()
	out, _, err = runOp(ops, "enable", "/azure/gpt4/")
	is.NoErr(err)
	saysFirst(t, "the output", out, "enabled /azure/gpt4/ on every replica; removed the manual disable by alice (maintenance)")
	saysLast(t, "the output", out, "; confirmed by all 3 replicas\n")
	is.Equal(phases("/azure/gpt4/"), []broker.Phase{broker.Enabled, broker.Enabled, broker.Enabled}) // as confirmed
	t.Logf("enable confirmed by all 3 in %v", time.Since(start).Round(time.Millisecond))
}

// TestDisableWithoutReplicasSaysNoneConfirmed: with no replica running,
// the write is in the bucket, and the line says no replica was heard
// rather than "on every replica".
func TestDisableWithoutReplicasSaysNoneConfirmed(t *testing.T) {
	t.Parallel()
	is := is.New(t)
	s := natstest.Start(t)
	js := natstest.JetStream(t, s)
	createBucket(t, js)
	ops := env("NATS_URL", s.ClientURL())

	out, _, err := runOp(ops, "disable", "/azure/gpt4/", "--by", "alice")
	is.NoErr(err)
	is.Equal(out, "disabled /azure/gpt4/ in bucket gl_broker until enabled by hand; manual, by alice: disabled by hand; no replica heard on broker.stats.gl_broker to confirm it\n")
	out, _, err = runOp(ops, "enable", "/azure/gpt4/")
	is.NoErr(err)
	is.Equal(out, "enabled /azure/gpt4/ in bucket gl_broker; removed the manual disable by alice (disabled by hand); no replica heard on broker.stats.gl_broker to confirm it\n")
}

func TestTimedManualDisableEndsByItselfOnEveryReplica(t *testing.T) {
	t.Parallel() // waits out disables, in step with the others
	// Long enough that the tools below normally run while it holds; every
	// bound is derived from the record's own until, so a slow run checks
	// the same promises, never a guess about how long the tools take.
	const span = 5 * time.Second
	for _, mode := range []kv.Mode{kv.ModeTTL, kv.ModeExpiry} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			is := is.New(t)
			s := natstest.Start(t)
			js := natstest.JetStream(t, s)
			if mode == kv.ModeExpiry {
				// As on nats-server 2.10, whose buckets have no per-key TTL.
				_, err := js.CreateKeyValue(context.Background(), jetstream.KeyValueConfig{Bucket: "gl_broker"})
				is.NoErr(err)
			}
			replicas := startReplicas(t, s, 2, 10*time.Minute)
			ops := env("NATS_URL", s.ClientURL())

			out, _, err := runOp(ops, "disable", "/azure/gpt4/", "--for", span.String()) // flags after the router
			done := time.Now()
			is.NoErr(err)
			rec, err := bucketRecord(t, js, "/azure/gpt4/")
			is.NoErr(err)
			is.Equal(rec.Record.Manual, true)                   // a disable by hand
			is.Equal(rec.Record.Until.Sub(rec.Record.At), span) // --for from the moment it was written
			m := regexp.MustCompile(`^disabled /azure/gpt4/ on every replica for (\S+), until (\S+); manual, by `).FindStringSubmatch(out)
			is.True(m != nil) // one confirming line
			is.Equal(strings.Count(out, "\n"), 1)
			is.Equal(m[2], rec.Record.Until.UTC().Format(time.RFC3339)) // says until when
			shown, err := time.ParseDuration(m[1])
			is.NoErr(err)
			is.True(shown <= span && shown >= rec.Record.Until.Sub(done).Round(time.Second)) // and how long is left when it printed
			natstest.Eventually(t, 5*time.Second, func() bool { return choosing(replicas, "/azure/gpt4/") == 0 }, "no replica chooses /azure/gpt4/")

			table, _, err := runOp(ops, "status")
			is.NoErr(err)
			is.True(strings.Contains(strings.SplitN(table, "\n", 2)[0], ", "+mode.String()+" mode (")) // the header names the mode

			// Status reads the clock at some moment within [before, after].
			before := time.Now()
			row := jsonRow(statusJSON(t, ops), "/azure/gpt4/")
			after := time.Now()
			switch row["state"] {
			case "disabled":
				is.True(before.Before(rec.Record.Until)) // disabled only while the record holds
				ceil := func(d time.Duration) float64 { return float64(max(0, (d+time.Second-1)/time.Second)) }
				left, ok := row["left_seconds"].(float64)
				is.True(ok)                                                                                      // a timed disable says how long is left
				is.True(left >= ceil(rec.Record.Until.Sub(after)) && left <= ceil(rec.Record.Until.Sub(before))) // rounded up
				is.Equal(row["until"], rec.Record.Until.UTC().Format(time.RFC3339))
			case "enabled":
				is.True(!after.Before(rec.Record.Until)) // enabled only once the record has ended
			default:
				t.Fatalf("status shows /azure/gpt4/ as %v", row["state"])
			}

			// Both replicas take it back by themselves, and neither before
			// its until: a replica seen choosing it was choosing it by then.
			var early time.Time
			natstest.Eventually(t, time.Until(rec.Record.Until)+5*time.Second, func() bool {
				n := choosing(replicas, "/azure/gpt4/")
				if seen := time.Now(); n > 0 && seen.Before(rec.Record.Until) && early.IsZero() {
					early = seen
				}
				return n == 2
			}, "both replicas choose /azure/gpt4/ again")
			if !early.IsZero() {
				t.Errorf("a replica chose /azure/gpt4/ %v before its until", rec.Record.Until.Sub(early))
			}
		})
	}
}

func TestManualDisableReplacesAnAutomaticOne(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	replicas := startReplicas(t, s, 2, 10*time.Minute)
	nc := natstest.Connect(t, s)
	js, err := jetstream.New(nc)
	is.NoErr(err)
	_, err = nc.Request("coburn.gl.broker", []byte(`{"gl_path":"/azure/dud/","egress_status_code":502}`), 2*time.Second)
	is.NoErr(err)
	var auto broker.Entry
	natstest.Eventually(t, 5*time.Second, func() bool {
		auto, err = bucketRecord(t, js, "/azure/dud/")
		if err != nil && !errors.Is(err, kv.ErrNotFound) {
			t.Fatalf("read the dud's record: %v", err)
		}
		return err == nil
	}, "the automatic record is written")
	is.Equal(auto.Record.Manual, false) // the replica's own

	out, _, err := runOp(env("NATS_URL", s.ClientURL()), "disable", "--by", "bob", "/azure/dud/", "--reason", "maintenance")
	is.NoErr(err)
	says(t, "the output", out, "; replaces the automatic disable by replica-") // says what it replaced
	got, err := bucketRecord(t, js, "/azure/dud/")
	is.NoErr(err)
	is.Equal(got.Record.Manual, true) // the operator's took its place
	is.Equal(got.Record.Reason, "maintenance")
	is.Equal(got.Record.By, "bob")
	is.True(got.Record.Until.IsZero()) // until enabled by hand, not the automatic until
	is.Equal(got.Record.Status, 0)
	natstest.Eventually(t, 5*time.Second, phaseOnEvery(replicas, "/azure/dud/", broker.Manual), "every replica holds the manual disable")
	is.Equal(choosing(replicas, "/azure/dud/"), 0) // still out on every replica
}

// phaseOnEvery says whether every replica's view has router in phase.
func phaseOnEvery(bs []*broker.Broker, router string, phase broker.Phase) func() bool {
	return func() bool {
		for _, b := range bs {
			if b.Phase(router) != phase {
				return false
			}
		}
		return true
	}
}

// TestEnableForgetsTheBackoffLevel: `broker enable` deletes the key, and
// with it the router's backoff level, so that the router's next failure
// is a first one: level 0, out for DISABLED_TIME.
func TestEnableForgetsTheBackoffLevel(t *testing.T) {
	t.Parallel() // waits out disables, in step with the others
	is := is.New(t)
	// Short, so that the first disable ends soon; long enough that the
	// failure after the enable comes well within two DISABLED_TIMEs of it,
	// where a level remembered would still count.
	const disabledTime = 2 * time.Second
	s := natstest.Start(t)
	replicas := startReplicas(t, s, 2, disabledTime)
	nc := natstest.Connect(t, s)
	js, err := jetstream.New(nc)
	is.NoErr(err)
	ops := env("NATS_URL", s.ClientURL())
	fail := func() {
		t.Helper()
		_, err := nc.Request("coburn.gl.broker", []byte(`{"gl_path":"/azure/dud/","egress_status_code":502}`), 2*time.Second)
		is.NoErr(err)
	}
	// disabledSince waits for the dud's record written at or after since.
	disabledSince := func(since time.Time) broker.Entry {
		t.Helper()
		var rec broker.Entry
		natstest.Eventually(t, 5*time.Second, func() bool {
			var err error
			rec, err = bucketRecord(t, js, "/azure/dud/")
			if err != nil && !errors.Is(err, kv.ErrNotFound) {
				t.Fatalf("read the dud's record: %v", err)
			}
			return err == nil && !rec.Record.At.Before(since)
		}, "a record for /azure/dud/ written since %v", since)
		return rec
	}

	// A failure, then a failed probe: backoff level 1.
	fail()
	natstest.Eventually(t, disabledTime+5*time.Second, phaseOnEvery(replicas, "/azure/dud/", broker.Probation), "the first disable ends on every replica")
	probed := time.Now()
	fail()
	rec := disabledSince(probed)
	is.Equal(rec.Record.Level, 1)                                      // backed off
	is.Equal(rec.Record.Until.Sub(rec.Record.At), 2*disabledTime)      // twice DISABLED_TIME
	is.True(strings.HasPrefix(rec.Record.Reason, "probe failed: "))    // after the probe failed
	is.Equal(jsonRow(statusJSON(t, ops), "/azure/dud/")["level"], 1.0) // as status shows it

	enabling := time.Now()
	out, _, err := runOp(ops, "enable", "/azure/dud/")
	is.NoErr(err)
	saysFirst(t, "the output", out, "enabled /azure/dud/ on every replica; removed ") // confirmed
	says(t, "the output", out, "automatic disable by replica-")                       // naming what it removed
	natstest.Eventually(t, 5*time.Second, phaseOnEvery(replicas, "/azure/dud/", broker.Enabled), "every replica heard the enable")

	enabled := time.Now()
	fail()
	rec = disabledSince(enabled)
	// Level 1 remembered from the enable would make this failure level 2
	// within one DISABLED_TIME, and level 1 within two.
	is.True(rec.Record.At.Sub(enabling) < 2*disabledTime)       // the failure came within two DISABLED_TIMEs of the enable
	is.Equal(rec.Record.Level, 0)                               // the backoff level was forgotten
	is.Equal(rec.Record.Until.Sub(rec.Record.At), disabledTime) // out for DISABLED_TIME
	is.Equal(rec.Record.Reason, "egress_status_code 502")       // a first failure, not a failed probe
}

func TestStatusWithoutReplicasShowsEveryRouterEnabled(t *testing.T) {
	t.Parallel()
	is := is.New(t)
	s := natstest.Start(t)
	createBucket(t, natstest.JetStream(t, s))
	ops := env("NATS_URL", s.ClientURL())

	table, _, err := runOp(ops, "status")
	is.NoErr(err)
	lines := strings.Split(strings.TrimSpace(table), "\n")
	is.Equal(len(lines), 7) // header (bucket, replicas), blank line, column heads, three routers
	says(t, "the first line", lines[0], "ttl mode")
	is.True(strings.HasPrefix(lines[1], "replicas: none heard on broker.stats.gl_broker")) // no figures, and why
	is.Equal(strings.Fields(lines[3]), []string{"INGRESS", "ROUTER", "TIER", "STATE", "UNTIL", "LEFT",
		"IN-FLIGHT", "SHARE", "LATENCY", "HEADROOM", "CALLS", "FAILED", "STATUS", "REASON", "BY", "LEVEL", "SESSIONS"})
	for _, r := range []string{"/azure/gpt35turbo/", "/azure/gpt4/", "/azure/dud/"} {
		is.Equal(strings.Fields(tableRow(table, r)), []string{"/azure/", r, "0", "enabled", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-"})
	}

	rows := statusJSON(t, ops)
	is.Equal(len(rows), 3)
	for _, r := range rows {
		names := make([]string, 0, len(r))
		for k := range r {
			names = append(names, k)
		}
		sort.Strings(names)
		is.Equal(names, []string{"by", "calls", "failure_rate", "headroom", "in_flight", "ingress", "latency_ms", "left_seconds", "level",
			"manual", "rate_limited_until", "reason", "router", "share", "state", "status", "tier", "until"}) // stable field names
		is.Equal(r["state"], "enabled")
	}
}

func TestStatusHidesNothingInTheBucket(t *testing.T) {
	t.Parallel()
	is := is.New(t)
	s := natstest.Start(t)
	js := natstest.JetStream(t, s)
	st := createBucket(t, js)
	ctx := context.Background()
	now := time.Now()
	until := now.Add(4*time.Minute + 12*time.Second)
	_, err := st.Create(ctx, broker.Record{Router: "/azure/gpt4/", Status: 503, Reason: "egress_status_code 503", At: now, Until: until, By: "replica-1"})
	is.NoErr(err)
	_, err = st.Create(ctx, broker.Record{Router: "/legacy/x/", Reason: "old\tway\nreally", At: now, By: "carol", Manual: true})
	is.NoErr(err)
	b, err := js.KeyValue(ctx, "gl_broker")
	is.NoErr(err)
	_, err = b.Put(ctx, "/azure/dud/", []byte("{written by hand\tbadly"))
	is.NoErr(err)
	ops := env("NATS_URL", s.ClientURL())

	before := time.Now() // status reads the clock within [before, after]
	table, _, err := runOp(ops, "status")
	after := time.Now()
	is.NoErr(err)
	gpt4 := strings.Fields(tableRow(table, "/azure/gpt4/"))
	is.Equal(gpt4[3], "disabled")
	left, err := time.ParseDuration(gpt4[5])
	is.NoErr(err)
	ceil := func(d time.Duration) time.Duration { return (d + time.Second - 1).Truncate(time.Second) }
	is.True(left >= ceil(until.Sub(after)) && left <= ceil(until.Sub(before))) // how long is left, in whole seconds rounded up
	is.Equal(gpt4[12], "503")
	says(t, "the row of /azure/dud/", tableRow(table, "/azure/dud/"), "unreadable")
	says(t, "the row of /legacy/x/", tableRow(table, "/legacy/x/"), "unknown router (manual)") // a router no pool knows
	neverSays(t, "the table", table, "\t")                                                     // a hand-written tab does not break the table
	is.Equal(strings.Count(table, "\n"), 3+1+4)                                                // nor a newline: header, blank, column heads, four rows

	rows := statusJSON(t, ops)
	is.Equal(len(rows), 4)
	is.Equal(jsonRow(rows, "/azure/gpt4/")["status"], 503.0)
	is.Equal(jsonRow(rows, "/azure/gpt4/")["until"], until.UTC().Format(time.RFC3339))
	is.Equal(jsonRow(rows, "/azure/dud/")["state"], "unreadable")
	legacy := jsonRow(rows, "/legacy/x/")
	is.Equal(legacy["state"], "unknown router")
	is.Equal(legacy["ingress"], "")
	is.Equal(legacy["manual"], true)
}

func TestStatusListsTheRoutersOfThePoolsFile(t *testing.T) {
	t.Parallel()
	is := is.New(t)
	s := natstest.Start(t)
	createBucket(t, natstest.JetStream(t, s))
	f := filepath.Join(t.TempDir(), "pools.json")
	is.NoErr(os.WriteFile(f, []byte(`{"pools":[
		{"ingress":"/azure/","routers":[{"path":"/azure/a/"},{"path":"/azure/b/"}]},
		{"ingress":"/openai/","routers":[{"path":"/openai/a/"},{"path":"/azure/b/"}]}]}`), 0o600))
	rows := statusJSON(t, env("NATS_URL", s.ClientURL(), "BROKER_POOLS", f))
	var got []string
	for _, r := range rows {
		got = append(got, r["ingress"].(string)+" "+r["router"].(string))
	}
	is.Equal(got, []string{"/azure/ /azure/a/", "/azure/ /azure/b/", "/openai/ /openai/a/", "/openai/ /azure/b/"}) // every pool's routers, in order
}

func TestToolsNeverCreateTheBucket(t *testing.T) {
	s := natstest.Start(t)
	js := natstest.JetStream(t, s)
	for _, args := range [][]string{{"status"}, {"disable", "/azure/gpt4/"}, {"enable", "/azure/gpt4/"}} {
		t.Run(args[0], func(t *testing.T) {
			is := is.New(t)
			_, _, err := runOp(env("NATS_URL", s.ClientURL()), args...)
			is.True(err != nil) // refused
			is.Equal(err.Error(), `bucket "gl_broker" does not exist on `+s.ClientURL()+`: no broker has run against this server yet, or BROKER_BUCKET differs`)
			_, err = js.KeyValue(context.Background(), "gl_broker")
			isErr(t, err, jetstream.ErrBucketNotFound) // still missing
		})
	}
}

func TestToolsWithoutJetStreamSayHowToEnableIt(t *testing.T) {
	s := natstest.Start(t, natstest.WithoutJetStream())
	for _, args := range [][]string{{"status"}, {"disable", "/azure/gpt4/"}, {"enable", "/azure/gpt4/"}} {
		t.Run(args[0], func(t *testing.T) {
			is := is.New(t)
			_, _, err := runOp(env("NATS_URL", s.ClientURL()), args...)
			is.True(err != nil) // refused
			saysFirst(t, "the error", err.Error(), "JetStream is not enabled on "+s.ClientURL())
			says(t, "the error", err.Error(), "nats-server.conf") // says where to enable it
			oneLine(t, err)
		})
	}
}

func TestBadOperatorInputIsOneLineBeforeConnecting(t *testing.T) {
	// Nothing listens here: input is refused before the tool connects.
	nowhere := env("NATS_URL", "nats://127.0.0.1:1")
	for _, tc := range []struct {
		name  string
		args  []string
		names []string
	}{
		{"router in no pool", []string{"disable", "/azure/gpt5/"}, []string{`"/azure/gpt5/"`, "/azure/gpt35turbo/, /azure/gpt4/, /azure/dud/", "--force"}},
		{"an ingress is no pool router", []string{"disable", "/azure/"}, []string{"in no pool"}},
		{"negative duration", []string{"disable", "/azure/gpt4/", "--for", "-5m"}, []string{"-for", "at least 1s"}},
		{"not a duration", []string{"disable", "/azure/gpt4/", "--for", "banana"}, []string{"-for", "30m"}},
		{"zero duration", []string{"disable", "--for", "0s", "/azure/gpt4/"}, []string{"-for"}},
		{"absurd duration", []string{"disable", "/azure/gpt4/", "--for", "9000h"}, []string{"-for", "year"}},
		{"disable without router", []string{"disable", "--for", "5m"}, []string{"ROUTER"}},
		{"enable without router", []string{"enable"}, []string{"ROUTER"}},
		{"two routers", []string{"disable", "/azure/gpt4/", "/azure/dud/"}, []string{"one ROUTER"}},
		{"not a router path", []string{"disable", "azure/gpt4"}, []string{`"azure/gpt4"`, "starts and ends with /"}},
		{"no key either", []string{"enable", "azure.*"}, []string{`"azure.*"`, "starts and ends with /"}},
		{"status takes no operand", []string{"status", "/azure/"}, []string{"unexpected argument"}},
		{"unknown flag", []string{"disable", "/azure/gpt4/", "--fro", "5m"}, []string{"-fro"}},
		{"bad bucket name", []string{"status", "--bucket", "a.b"}, []string{"bucket"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			is := is.New(t)
			out, _, err := runOp(nowhere, tc.args...)
			is.True(err != nil) // refused
			for _, n := range tc.names {
				says(t, "the error", err.Error(), n) // the line names the problem
			}
			oneLine(t, err) // one line
			neverSays(t, "the error", err.Error(), "cannot connect")
			is.Equal(out, "")
		})
	}
}

func TestForcedDisableOfARouterNoPoolHas(t *testing.T) {
	t.Parallel()
	is := is.New(t)
	s := natstest.Start(t)
	js := natstest.JetStream(t, s)
	createBucket(t, js)
	_, _, err := runOp(env("NATS_URL", s.ClientURL()), "disable", "--force", "/other/pool/router/")
	is.NoErr(err)
	got, err := bucketRecord(t, js, "/other/pool/router/")
	is.NoErr(err)
	is.Equal(got.Record.Manual, true) // disabled by hand, though no pool has it
}

func TestDisableHelpNamesTheRouterOperand(t *testing.T) {
	is := is.New(t)
	out, _, err := runOp(env("NATS_TOKEN", "s3cr3t"), "disable", "-h")
	is.NoErr(err)
	saysFirst(t, "the output", out, "Usage: broker disable ROUTER [flags]\n")
	for _, f := range []string{"-for", "-reason", "-by", "-force", "NATS_URL"} {
		says(t, "the output", out, f)
	}
	neverSays(t, "the output", out, "s3cr3t")
}

func TestUnreachableServerFailsFastInOneLineWithoutCredentials(t *testing.T) {
	for _, tc := range []struct{ url, secret, starts string }{
		{"nats://s3cr3t-t0ken@127.0.0.1:1", "s3cr3t-t0ken", "cannot connect to NATS at nats://[redacted]@127.0.0.1:1: "},
		// net/url would quote a URL it refuses, credentials and all: such a
		// URL is refused before connecting.
		{"nats://user:pa55w0rd@127.0.0.1:4x", "pa55w0rd", "NATS_URL nats://[redacted]@127.0.0.1:4x: "},
	} {
		t.Run(tc.url, func(t *testing.T) {
			is := is.New(t)
			start := time.Now()
			out, errs, err := runOp(env("NATS_URL", tc.url), "status")
			is.True(err != nil)                         // the tool fails
			is.True(time.Since(start) < 10*time.Second) // no reconnecting forever
			saysFirst(t, "the error", err.Error(), tc.starts)
			oneLine(t, err)
			for _, text := range []string{out, errs, err.Error()} {
				neverSays(t, "what it printed", text, tc.secret) // never the secret
			}
		})
	}
}

func TestToolsNeverPrintTheToken(t *testing.T) {
	t.Parallel()
	const token = "s3cr3t-t0ken"
	s := natstest.Start(t, natstest.WithToken(token))
	nc := natstest.Connect(t, s, nats.Token(token))
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	createBucket(t, js)
	url := s.ClientURL()
	inURL := strings.Replace(url, "nats://", "nats://"+token+"@", 1)
	for _, tc := range []struct {
		name   string
		getenv func(string) string
		args   []string
		fails  string // the start of the error, or "" for success
	}{
		{"status", env("NATS_URL", url, "NATS_TOKEN", token), []string{"status"}, ""},
		{"status json", env("NATS_URL", url, "NATS_TOKEN", token), []string{"status", "--json"}, ""},
		{"disable", env("NATS_URL", url, "NATS_TOKEN", token), []string{"disable", "/azure/dud/", "--for", "1h"}, ""},
		{"enable", env("NATS_URL", url, "NATS_TOKEN", token), []string{"enable", "/azure/dud/"}, ""},
		{"token in the URL", env("NATS_URL", inURL), []string{"status"}, ""},
		{"token in the URL, missing bucket", env("NATS_URL", inURL, "BROKER_BUCKET", "other"), []string{"status"}, `bucket "other" does not exist on nats://[redacted]@`},
		{"token flag", env("NATS_URL", url), []string{"status", "--token", token}, ""},
		{"no token", env("NATS_URL", url), []string{"status"}, "cannot connect to NATS"},
		{"wrong token", env("NATS_URL", url, "NATS_TOKEN", token+"-old"), []string{"disable", "/azure/gpt4/"}, "cannot connect to NATS"},
		{"wrong token in the URL", env("NATS_URL", strings.Replace(inURL, token, token+"-old", 1)), []string{"status"}, "cannot connect to NATS at nats://[redacted]@"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			is := is.New(t)
			out, errs, err := runOp(tc.getenv, tc.args...)
			if tc.fails == "" {
				is.NoErr(err)
			} else {
				is.True(err != nil) // refused
				saysFirst(t, "the error", err.Error(), tc.fails)
				if strings.HasPrefix(tc.fails, "cannot connect") {
					says(t, "the error", err.Error(), "NATS_TOKEN") // the hint names the setting
				}
				out += err.Error()
			}
			neverSays(t, "the output", out, token)        // not on stdout nor in the error
			neverSays(t, "the error output", errs, token) // nor on stderr
			if tc.name == "token in the URL" {
				says(t, "the output", out, " on nats://[redacted]@127.0.0.1:") // the header shows where, not how
			}
		})
	}
}

func TestStatusShowsProbationWithItsProbeAndTheBackoffLevel(t *testing.T) {
	t.Parallel()
	is := is.New(t)
	s := natstest.Start(t)
	js := natstest.JetStream(t, s)
	st := createBucket(t, js)
	ctx := context.Background()
	now := time.Now()
	_, err := st.Create(ctx, broker.Record{Router: "/azure/gpt4/", Status: 502, Reason: "probe failed: egress_status_code 502",
		At: now, Until: now.Add(40 * time.Minute), By: "replica-1", Level: 2})
	is.NoErr(err)
	_, err = st.Create(ctx, broker.Record{Router: "/azure/dud/", Status: 503, Reason: "egress_status_code 503",
		At: now.Add(-time.Hour), Until: now.Add(-time.Second), By: "replica-1", Level: 1,
		Probe: &broker.Probe{By: "replica-3", At: now, Until: now.Add(2 * time.Minute)}})
	is.NoErr(err)
	ops := env("NATS_URL", s.ClientURL())

	table, _, err := runOp(ops, "status")
	is.NoErr(err)
	says(t, "the row of /azure/dud/", tableRow(table, "/azure/dud/"), "probation (probe: replica-3)")
	rows := statusJSON(t, ops)
	is.Equal(jsonRow(rows, "/azure/gpt4/")["level"], 2.0)
	dud := jsonRow(rows, "/azure/dud/")
	is.Equal(dud["state"], "probation")
	is.Equal(dud["probe"], "replica-3")
	is.Equal(dud["level"], 1.0)
}
