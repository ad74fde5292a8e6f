package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matryer/is"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/replica"
)

// What a hostile or careless writer of the bucket can put there, and what
// the operator's commands make of it.

// rawKey publishes value straight to the bucket's subject for key, past the
// KV API and its check of the key's characters, and waits until the
// bucket's stream holds it.
func rawKey(t *testing.T, js jetstream.JetStream, key, value string) {
	t.Helper()
	if _, err := js.Publish(context.Background(), "$KV.gl_broker."+key, []byte(value)); err != nil {
		t.Fatalf("publish %q: %v", key, err)
	}
}

// watchFrame runs status --watch until its first frame and returns it.
func watchFrame(t *testing.T, getenv func(string) string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out syncBuffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"status", "--watch"}, getenv, &out, &out) }()
	frames := func() []string { return strings.Split(out.String(), "\x1b[H\x1b[2J")[1:] }
	natstest.Eventually(t, 10*time.Second, func() bool { return len(frames()) >= 2 }, "two frames")
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("status --watch: %v", err)
	}
	return frames()[0]
}

func TestStatusShowsAKeyTheKVAPIRefusesAndEnableRemovesIt(t *testing.T) {
	t.Parallel()
	is := is.New(t)
	s := natstest.Start(t)
	js := natstest.JetStream(t, s)
	st := createBucket(t, js)
	_, err := st.Create(context.Background(), broker.Record{Router: "/azure/dud/", Status: 502, Reason: "egress_status_code 502",
		At: time.Now(), Until: time.Now().Add(time.Hour), By: "replica-1"})
	is.NoErr(err)
	const bad = "<svg/onload=alert(6)>"
	rawKey(t, js, bad, "x")
	rawKey(t, js, "evil\u202ett", `{"v":1,"router":"x","reason":"r","at":"2026-01-01T00:00:00Z","by":"mallory"}`)
	ops := env("NATS_URL", s.ClientURL())

	// --json: every key, the refused ones marked.
	rows := statusJSON(t, ops)
	is.Equal(jsonRow(rows, "/azure/dud/")["state"], "disabled") // the others are listed as ever
	row := jsonRow(rows, bad)
	is.True(row != nil) // the refused key is listed
	is.Equal(row["state"], "invalid key")
	says(t, "the row's reason", fmt.Sprint(row["reason"]), "not a router") // says why
	is.Equal(jsonRow(rows, "evil\u202ett")["state"], "invalid key")

	// The table: the same, the override escaped.
	table, _, err := runOp(ops, "status")
	is.NoErr(err)
	t.Logf("broker status\n%s", table)
	says(t, "the row of "+bad, tableRow(table, bad), "invalid key")
	says(t, "the row of /azure/dud/", tableRow(table, "/azure/dud/"), "disabled")
	says(t, "the table", table, `evil\u202ett`) // shown escaped
	neverSays(t, "the table", table, "\u202e")  // never raw

	// --watch draws the table, not an error.
	frame := watchFrame(t, ops)
	neverSays(t, "the frame", frame, "cannot read bucket")
	says(t, "the row of "+bad, tableRow(frame, bad), "invalid key")

	// enable removes the key, whatever it is.
	out, _, err := runOp(ops, "enable", bad)
	is.NoErr(err)
	is.Equal(out, "removed key "+bad+" from bucket gl_broker: no router path, so every replica ignored it\n")
	out, _, err = runOp(ops, "enable", "evil\u202ett")
	is.NoErr(err)
	says(t, "the output", out, `evil\u202ett`) // the confirmation escapes it too
	rows = statusJSON(t, ops)
	is.Equal(jsonRow(rows, bad), nil)            // gone
	is.Equal(jsonRow(rows, "evil\u202ett"), nil) // gone
	is.True(jsonRow(rows, "/azure/dud/") != nil) // the rest untouched
	is.Equal(jsonRow(rows, "/azure/dud/")["state"], "disabled")

	// A key the bucket does not hold, and no router path: one line.
	_, _, err = runOp(ops, "enable", bad)
	is.True(err != nil) // refused
	says(t, "the error", err.Error(), "holds no such key")
}

func TestStatusShowsControlAndBidiCharactersEscaped(t *testing.T) {
	t.Parallel()
	is := is.New(t)
	s := natstest.Start(t)
	js := natstest.JetStream(t, s)
	st := createBucket(t, js)
	spoof := "quota\u202e ok \u009b31m\x1b[2J\u2066\u200b!"
	_, err := st.Create(context.Background(), broker.Record{Router: "/azure/gpt4/", Reason: spoof,
		At: time.Now(), Until: time.Now().Add(time.Hour), By: "alice\u009b\u2067", Manual: true})
	is.NoErr(err)
	ops := env("NATS_URL", s.ClientURL())

	table, _, err := runOp(ops, "status")
	is.NoErr(err)
	t.Logf("broker status\n%s", table)
	for _, raw := range []string{"\u202e", "\u009b", "\x1b[2J", "\u2066", "\u2067", "\u200b"} {
		neverSays(t, "the table", table, raw) // nothing reaches the terminal raw
	}
	says(t, "the row of /azure/gpt4/", tableRow(table, "/azure/gpt4/"), `quota\u202e ok \u009b31m\u001b[2J\u2066\u200b!`) // shown escaped
	says(t, "the row of /azure/gpt4/", tableRow(table, "/azure/gpt4/"), `alice\u009b\u2067`)

	out, _, err := runOp(ops, "status", "--json")
	is.NoErr(err)
	for _, raw := range []string{"\u202e", "\u009b", "\x1b", "\u2066", "\u2067", "\u200b"} {
		neverSays(t, "the output", out, raw) // JSON-escaped, not raw
	}
	var rows []map[string]any
	is.NoErr(json.Unmarshal([]byte(out), &rows))
	is.Equal(jsonRow(rows, "/azure/gpt4/")["reason"], spoof) // the same text to a script
}

func TestStatusShowsAHugeReasonCut(t *testing.T) {
	t.Parallel()
	is := is.New(t)
	s := natstest.Start(t)
	js := natstest.JetStream(t, s)
	st := createBucket(t, js)
	huge := strings.Repeat("r", 100_000)
	_, err := st.Create(context.Background(), broker.Record{Router: "/azure/gpt4/", Reason: huge,
		At: time.Now(), Until: time.Now().Add(time.Hour), By: strings.Repeat("b", 50_000), Manual: true})
	is.NoErr(err)
	ops := env("NATS_URL", s.ClientURL())
	table, _, err := runOp(ops, "status")
	is.NoErr(err)
	line := tableRow(table, "/azure/gpt4/")
	says(t, "the row of /azure/gpt4/", line, strings.Repeat("r", 200)+"… [99800 more bytes]") // cut at 200, with how much was left out
	is.True(len(line) < 2000)                                                                 // the row stays a row
	rows := statusJSON(t, ops)
	is.Equal(jsonRow(rows, "/azure/gpt4/")["reason"], strings.Repeat("r", 200)+"… [99800 more bytes]")
}

// forgeStats publishes each message on the stats subject every period,
// as a client that may publish there can, until stop is called or the
// test ends.
func forgeStats(t *testing.T, nc *nats.Conn, every time.Duration, msgs ...replica.StatsMessage) (stop func()) {
	t.Helper()
	var data [][]byte
	for _, m := range msgs {
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		data = append(data, b)
	}
	stopped, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			for _, b := range data {
				_ = nc.Publish("broker.stats.gl_broker", b)
			}
			select {
			case <-stopped:
				return
			case <-tick.C:
			}
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { close(stopped); <-done }) }
	t.Cleanup(stop)
	return stop
}

// TestForgedConfirmationsOnlyChangeWhatDisableSays forges replicas on
// the stats subject beside one real replica: one that never confirms, one
// whose name is long and holds control characters, one whose name is
// longer than a replica's may be, one that forges a confirmation, and one
// that forges it in a message of 300 KB. `broker disable` counts what it
// heard, and says so in one line: never "on every replica" while one
// heard did not confirm, every name cut and escaped, the oversized name
// never; the disable itself is in the bucket and on the real replica.
// A flood of forged names is named ten at a time.
func TestForgedConfirmationsOnlyChangeWhatDisableSays(t *testing.T) {
	t.Parallel()
	is := is.New(t)
	s := natstest.Start(t)
	replicas := startReplicas(t, s, 1, time.Minute)
	forger := natstest.Connect(t, s)
	confirming := replica.TakenTold{Router: "/azure/gpt4/", Revision: math.MaxUint64, Phase: "manual"}
	bulky := make([]replica.TakenTold, 5000)
	for i := range bulky {
		bulky[i] = replica.TakenTold{Router: fmt.Sprintf("/azure/forged-%d/", i), Revision: uint64(i), Phase: "disabled"}
	}
	longName := "zz\x1b[31m" + strings.Repeat("y", 240)
	// Twice a second, twice as often as replicas tell: ten times a second,
	// the 300 KB message, parsed under -race by the replica and by the
	// command on a busy machine, kept the command's subscription more than
	// its 2 s of listening behind (the count's busy run on 6754f60: it
	// heard 4 of 5).
	stopFirst := forgeStats(t, forger, 500*time.Millisecond,
		replica.StatsMessage{ID: "ghost"},
		replica.StatsMessage{ID: longName},
		replica.StatsMessage{ID: strings.Repeat("x", replica.MaxID+1), Taken: []replica.TakenTold{confirming}},
		replica.StatsMessage{ID: "liar", Taken: []replica.TakenTold{confirming}},
		replica.StatsMessage{ID: "bulky", Taken: append(bulky, confirming)},
	)
	// disable stops listening once it heard as many replicas as they say
	// they hear: before the real replica heard the forgers, it says none,
	// and disable would end on its word alone.
	heardPeers := func(n int) {
		t.Helper()
		natstest.Eventually(t, 10*time.Second, func() bool { return replicas[0].Peers() >= n },
			"replica-1 hearing %d forged replicas", n)
	}
	heardPeers(4) // ghost, the long name, liar and bulky: never the oversized name
	ops := env("NATS_URL", s.ClientURL())

	out, _, err := runOp(ops, "disable", "/azure/gpt4/", "--by", "alice")
	is.NoErr(err)
	t.Logf("broker disable said: %s", out)
	saysFirst(t, "the output", out, "disabled /azure/gpt4/ in bucket gl_broker until enabled by hand; manual, by alice: disabled by hand; ")
	says(t, "the output", out, "; confirmed by 3 of 5 replicas within 2s; not yet: ghost, zz\\u001b[31myyy") // replica-1, liar and bulky; escaped
	neverSays(t, "the output", out, "on every replica")
	neverSays(t, "the output", out, "\x1b")
	neverSays(t, "the output", out, strings.Repeat("y", 200))  // cut
	neverSays(t, "the output", out, "xxx")                     // a name no replica may have is never heard
	is.Equal(strings.Count(out, "\n"), 1)                      // one line
	is.True(len(out) < 1000)                                   // and a short one
	is.Equal(replicas[0].Phase("/azure/gpt4/"), broker.Manual) // the disable itself holds
	js := natstest.JetStream(t, s)
	rec, err := bucketRecord(t, js, "/azure/gpt4/")
	is.NoErr(err)
	is.Equal(rec.Record.By, "alice") // in the bucket, as written

	var flood []replica.StatsMessage
	for i := range 300 {
		flood = append(flood, replica.StatsMessage{ID: fmt.Sprintf("ghost-%03d", i)})
	}
	// The first forgers stop, and the flood's names are told once a
	// second, as replicas tell: 300 KB and 300 names ten times a second,
	// handled under -race on a busy machine, kept the replica's stats
	// subscription behind the flood for over 10 s (the count's busy runs).
	stopFirst()
	forgeStats(t, forger, time.Second, flood...)
	heardPeers(len(flood))
	out, _, err = runOp(ops, "enable", "/azure/gpt4/")
	is.NoErr(err)
	m := regexp.MustCompile(`^enabled /azure/gpt4/ in bucket gl_broker; removed the manual disable by alice \(disabled by hand\); confirmed by (\d+) of (\d+) replicas within 2s; not yet: ((?:[^,]+, ){10})and (\d+) more \(a replica cut off`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("broker enable said %q, want ten names and how many more", out)
	}
	t.Logf("broker enable said: %s", out)
	heard, _ := strconv.Atoi(m[2])
	is.True(heard <= 256)                                       // the replicas heard are bounded
	is.Equal(strings.Count(out, "\n"), 1)                       // one line
	is.Equal(replicas[0].Phase("/azure/gpt4/"), broker.Enabled) // the enable itself holds
}
