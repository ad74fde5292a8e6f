package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/standin"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/ops"
)

func TestStatusShowsTheClampedTimeTheReplicasActOnBesideAForgedRecordsOwn(t *testing.T) {
	t.Parallel()
	is := is.New(t)
	s := natstest.Start(t)
	js := natstest.JetStream(t, s)
	st := createBucket(t, js)
	ctx := context.Background()
	now := time.Now()
	forged := time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC)
	_, err := st.Create(ctx, broker.Record{Router: "/azure/dud/", Status: 502, Reason: "egress_status_code 502", At: now, Until: forged, By: "replica-9"})
	is.NoErr(err)
	// An automatic record without an end: clamped too.
	_, err = st.Create(ctx, broker.Record{Router: "/azure/gpt35turbo/", Status: 503, Reason: "egress_status_code 503", At: now, By: "replica-9"})
	is.NoErr(err)
	// An operator's word is kept as it is, however far it reaches.
	_, err = st.Create(ctx, broker.Record{Router: "/azure/gpt4/", Reason: "migrating", At: now, Until: forged, By: "alice", Manual: true})
	is.NoErr(err)
	// A replica with DISABLED_TIME=1 holds every automatic disable to 8
	// minutes (BROKER_BACKOFF_CAP 8) from when the bucket kept the record.
	replicas := startReplicas(t, s, 1, time.Minute)
	acts := replicas[0].Until("/azure/dud/")
	is.True(acts.Before(now.Add(8*time.Minute + 2*time.Second))) // the replica clamps it

	ops := env("NATS_URL", s.ClientURL(), "DISABLED_TIME", "1")
	rows := statusJSON(t, ops)
	dud := jsonRow(rows, "/azure/dud/")
	is.Equal(dud["state"], "disabled")
	is.Equal(dud["until"], acts.UTC().Format(time.RFC3339)) // the time the replicas act on
	is.Equal(dud["clamped"], true)                          // marked as clamped
	is.Equal(dud["record_until"], "2099-01-01T00:00:00Z")   // with the record's own beside it
	is.True(dud["left_seconds"].(float64) <= 8*60+2)        // 8 minutes, not 631,947 hours
	endless := jsonRow(rows, "/azure/gpt35turbo/")
	is.Equal(endless["clamped"], true)
	is.Equal(endless["record_until"], nil) // the record has no end of its own
	is.True(endless["until"] != nil)       // but the replicas' clamped one
	manual := jsonRow(rows, "/azure/gpt4/")
	is.Equal(manual["until"], "2099-01-01T00:00:00Z")
	is.Equal(manual["clamped"], nil) // not clamped, and no field for it

	table, _, err := runOp(ops, "status")
	is.NoErr(err)
	t.Logf("DISABLED_TIME=1 broker status\n%s", table)
	line := tableRow(table, "/azure/dud/")
	says(t, "the row of /azure/dud/", line, acts.UTC().Format(time.RFC3339)+" clamped (record: 2099-01-01T00:00:00Z)")
	own := strings.Index(line, "(record: 2099-01-01T00:00:00Z)")
	is.True(own > 0)                                               // the record's own until, after the one the replicas act on
	left, err := time.ParseDuration(strings.Fields(line[own:])[2]) // after the until cell: "(record:", its own)
	is.NoErr(err)
	is.True(left <= 8*time.Minute+2*time.Second) // what is left, at most the cap
	says(t, "the row of /azure/gpt35turbo/", tableRow(table, "/azure/gpt35turbo/"), "clamped (record: none)")

	// The cap comes from the processor's settings: BROKER_BACKOFF_CAP=2
	// holds it to two minutes.
	rows = statusJSON(t, env("NATS_URL", s.ClientURL(), "DISABLED_TIME", "1", "BROKER_BACKOFF_CAP", "2"))
	is.True(jsonRow(rows, "/azure/dud/")["left_seconds"].(float64) <= 2*60+2) // 2 minutes at most

	// Given no policy, status holds records to the fleet's configuration,
	// which the replica wrote with its DISABLED_TIME of 1 minute.
	rows = statusJSON(t, env("NATS_URL", s.ClientURL()))
	is.True(jsonRow(rows, "/azure/dud/")["left_seconds"].(float64) <= 8*60+2) // 8 minutes, not the default's 80
}

func TestStatusTakesThePoliciesSettingsAsTheProcessorDoes(t *testing.T) {
	is := is.New(t)
	out, _, err := runOp(env(), "status", "-h")
	is.NoErr(err)
	for _, want := range []string{"-disabled-time", "DISABLED_TIME", "-backoff-cap", "BROKER_BACKOFF_CAP", "-probe-timeout", "-watch"} {
		says(t, "the output", out, want) // status -h lists the setting
	}
	_, _, err = runOp(env("DISABLED_TIME", "ten"), "status")
	is.True(err != nil)                                // a bad value is refused as serve refuses it
	says(t, "the error", err.Error(), "DISABLED_TIME") // naming the setting
}

func TestStatusWatchRedrawsTheTableEverySecondUntilInterrupted(t *testing.T) {
	t.Parallel()
	is := is.New(t)
	s := natstest.Start(t)
	createBucket(t, natstest.JetStream(t, s))
	ops := env("NATS_URL", s.ClientURL())

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out syncBuffer
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- run(ctx, []string{"status", "--watch"}, ops, &out, &out) }()
	frames := func() []string {
		f := strings.Split(out.String(), "\x1b[H\x1b[2J") // each redraw clears the screen first
		return f[1:]
	}
	natstest.Eventually(t, 10*time.Second, func() bool { return len(frames()) >= 2 }, "two frames")
	is.True(time.Since(start) >= time.Second) // a second apart
	first := frames()[0]
	saysFirst(t, "the first frame", first, "Every 1s: broker status (Ctrl-C to stop)\n")
	says(t, "the first frame", first, "INGRESS")
	says(t, "the row of /azure/gpt4/", tableRow(first, "/azure/gpt4/"), "enabled")

	_, _, err := runOp(ops, "disable", "/azure/gpt4/", "--reason", "quota exhausted")
	is.NoErr(err)
	natstest.Eventually(t, 5*time.Second, func() bool {
		f := frames()
		return strings.Contains(tableRow(f[len(f)-1], "/azure/gpt4/"), "quota exhausted")
	}, "a later frame shows the disable")

	cancel() // Ctrl-C
	select {
	case err := <-done:
		is.NoErr(err) // an interrupt is a clean stop
	case <-time.After(5 * time.Second):
		t.Fatal("status --watch still running 5s after its interrupt")
	}

	_, _, err = runOp(ops, "status", "--watch", "--json")
	is.True(err != nil)                          // one or the other
	says(t, "the error", err.Error(), "--watch") // naming the flag
}

// status adds up what every replica tells on the stats subject: per
// router, the tier, the calls in flight over the fleet, the share of the
// pool's choices, the latency and headroom from gecholog's transaction
// log, and the failure rate; and says when the log a pool needs is silent.
func TestStatusShowsTheFleetsFiguresPerRouter(t *testing.T) {
	t.Parallel()
	is := is.New(t)
	s := natstest.Start(t)
	pools := filepath.Join(t.TempDir(), "pools.json")
	is.NoErr(os.WriteFile(pools, []byte(`{"pools":[{"ingress":"/azure/","strategy":"latency","routers":[
		{"path":"/azure/gpt4/"},{"path":"/azure/gpt35turbo/"},{"path":"/azure/dud/","priority":1}]}]}`), 0o600))
	ops := env("NATS_URL", s.ClientURL(), "BROKER_POOLS", pools)
	table, _, err := runOp(ops, "status")
	is.True(err != nil) // no bucket yet: no replica ever ran
	for _, id := range []string{"replica-1", "replica-2"} {
		waitReady(t, startMetricsReplica(t, s.ClientURL(), "BROKER_POOLS", pools, "BROKER_ID", id, "BROKER_FAILURE_THRESHOLD", "100"))
	}
	table, _, err = runOp(ops, "status")
	is.NoErr(err)
	says(t, "the table", table, "replicas: 2 heard on broker.stats.gl_broker (replica-1, replica-2)\n")
	says(t, "the table", table, "transaction log: never heard, so /azure/ (latency) choose at random") // the log the pool needs is silent

	nc := natstest.Connect(t, s)
	for range 4 { // chosen, never reported: in flight
		_, err := nc.Request("coburn.gl.broker", []byte(`{"gl_path":"/azure/"}`), 2*time.Second)
		is.NoErr(err)
	}
	for _, status := range []int{200, 502, 200, 200} { // 1 of 4 failed
		_, err := nc.Request("coburn.gl.broker", fmt.Appendf(nil, `{"gl_path":"/azure/dud/","egress_status_code":%d}`, status), 2*time.Second)
		is.NoErr(err)
	}
	is.NoErr(nc.Publish("coburn.gl.logger", standin.Transaction(standin.Finished{Ingress: "/azure/", Router: "/azure/gpt4/",
		Latency: 40 * time.Millisecond, Headers: map[string]string{"x-ratelimit-remaining-requests": "30", "x-ratelimit-limit-requests": "120"}})))

	var rows []map[string]any
	natstest.Eventually(t, 5*time.Second, func() bool {
		rows = statusJSON(t, ops)
		gpt4, gpt35, dud := jsonRow(rows, "/azure/gpt4/"), jsonRow(rows, "/azure/gpt35turbo/"), jsonRow(rows, "/azure/dud/")
		return gpt4["latency_ms"] == 40.0 && dud["calls"] == 4.0 &&
			gpt4["in_flight"] != nil && gpt35["in_flight"] != nil && gpt4["in_flight"].(float64)+gpt35["in_flight"].(float64) == 4
	}, "status adds up both replicas' counts")
	gpt4, gpt35, dud := jsonRow(rows, "/azure/gpt4/"), jsonRow(rows, "/azure/gpt35turbo/"), jsonRow(rows, "/azure/dud/")
	is.Equal(gpt4["tier"], 0.0)
	is.Equal(dud["tier"], 1.0)
	is.Equal(dud["in_flight"], 0.0)
	is.Equal(gpt4["headroom"], 0.25) // 30 of 120 left
	is.Equal(gpt35["headroom"], nil) // its upstream said nothing
	is.Equal(gpt35["latency_ms"], nil)
	is.Equal(dud["failure_rate"], 0.25)
	is.Equal(gpt4["failure_rate"], nil) // no calls reported
	share := 0.0
	for _, r := range []map[string]any{gpt4, gpt35} {
		if r["share"] != nil {
			share += r["share"].(float64)
		}
	}
	is.Equal(share, 1.0) // every choice went to tier 0

	table, _, err = runOp(ops, "status")
	is.NoErr(err)
	t.Logf("broker status\n%s", table)
	says(t, "the table", table, "transaction log: last heard ")
	// INGRESS ROUTER TIER STATE UNTIL LEFT IN-FLIGHT SHARE LATENCY HEADROOM CALLS FAILED ...
	dudCells, gpt4Cells := strings.Fields(tableRow(table, "/azure/dud/")), strings.Fields(tableRow(table, "/azure/gpt4/"))
	is.Equal(dudCells[2], "1")                         // tier
	is.Equal(dudCells[10:12], []string{"4", "25%"})    // calls, failed
	is.Equal(gpt4Cells[8:10], []string{"40ms", "25%"}) // latency, headroom
}

// TestAStaleStatusExitsWithItsOwnCode: a script tells a status printed
// from one server's copy of the bucket (3) from the truth (0) and from a
// failure to print anything (1), however the error was wrapped.
func TestAStaleStatusExitsWithItsOwnCode(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{fmt.Errorf("%w: gl_broker does not answer through nats://127.0.0.1:4222 (no leader)", ops.ErrStale), 3},
		{natsconn.Settings{Servers: "nats://127.0.0.1:4222"}.Scrub(fmt.Errorf("%w: no quorum", ops.ErrStale)), 3},
		{errors.New("no answer from nats://127.0.0.1:4222 within 10s"), 1},
	} {
		if got := exitCode(tc.err); got != tc.want {
			t.Errorf("exit code for %q: %d, want %d", tc.err, got, tc.want)
		}
	}
}
