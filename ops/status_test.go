package ops

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/kv"
	"github.com/gecholog/broker/replica"
)

func TestStatusRowsKeepThePoolsOrderAndAddUnknownRoutersInKeyOrder(t *testing.T) {
	is := is.New(t)
	now := time.Now()
	policy, err := broker.Policy{DisabledTime: time.Minute}.Resolve()
	is.NoErr(err)
	rec := func(r string) kv.Listed {
		return kv.Listed{Router: r, Entry: broker.Entry{Record: broker.Record{Router: r, At: now, Until: now.Add(time.Minute)}}}
	}
	rows := statusRows(broker.DefaultPools(), policy, []kv.Listed{rec("/z/"), rec("/azure/dud/"), rec("/a/")}, fleetView{}, now)
	var got []string
	for _, r := range rows {
		got = append(got, r.Router+" "+r.State)
	}
	is.Equal(got, []string{
		"/azure/gpt35turbo/ enabled", "/azure/gpt4/ enabled", "/azure/dud/ disabled",
		"/a/ unknown router", "/z/ unknown router",
	})
	var buf bytes.Buffer
	is.NoErr(writeTable(&buf, rows))
	is.Equal(strings.Count(buf.String(), "\n"), 6) // column heads and one line per row
}

func TestTheReplicasSectionMarksDriftAndShowsWhatWasToldAsText(t *testing.T) {
	is := is.New(t)
	one, two := uint64(1), uint64(2)
	f := replica.MarkRevisions([]replica.ReplicaRevision{
		{ID: "replica-1", Revision: &two},
		{ID: "evil\x1b[2J\u202e", Revision: &one, Refused: "refused revision 3: \x1b]0;pwned\x07"},
		{ID: "old"},
	}, "gl_broker_config", 0) // the bucket could not be read: held to the highest run
	var buf bytes.Buffer
	is.NoErr(writeReplicas(&buf, f, configLatest{bucket: "gl_broker_config", err: errors.New("nats: timeout")}))
	out := buf.String()
	words := strings.Join(strings.Fields(out), " ") // the table's padding aside
	for _, want := range []string{
		"configuration: DRIFT: 1 of 2 replicas out of step with revision 2, the highest any replica runs (1 refusing a newer revision); 1 replica on revision 1, 1 on revision 2",
		"configuration bucket gl_broker_config: its newest revision could not be read (nats: timeout), so the replicas are held to the highest any runs",
		"replica-1 2 in step",
		`evil\u001b[2J\u202e 1 DRIFT: refused revision 3: \u001b]0;pwned\u0007`,
		"old - told no revision",
	} {
		if !strings.Contains(words, want) {
			t.Fatalf("the section does not say %q; it says:\n%s", want, out)
		}
	}
	is.True(!strings.ContainsAny(out, "\x1b\u202e\x07")) // nothing in it acts on a terminal
}

func TestAStaleStatusSaysSoAboveTheTableAndInEveryJSONRow(t *testing.T) {
	is := is.New(t)
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	policy, err := broker.Policy{DisabledTime: time.Minute}.Resolve()
	is.NoErr(err)
	dud := kv.Listed{Router: "/azure/dud/", Entry: broker.Entry{Revision: 7,
		Record: broker.Record{Router: "/azure/dud/", Status: 502, Reason: "egress_status_code 502", At: now.Add(-90 * time.Second), Until: now.Add(time.Hour), By: "replica-1", Manual: true}}}
	c := kv.NodeCopy{Listed: []kv.Listed{dud}, Revision: 7, Changed: now.Add(-90 * time.Second)}
	changed := c.Changed.Format(time.RFC3339)
	note := &staleNote{Cause: "no leader for KV_gl_broker (the cluster is electing one, or too few of its servers can reach each other)",
		Bucket: "gl_broker", Server: "nats://127.0.0.1:4222", Node: "n1", Revision: 7, Changed: &changed}
	rows := statusRows(broker.DefaultPools(), policy, c.Listed, fleetView{}, now)
	for i := range rows {
		rows[i].Stale = note
	}
	v := statusView{head: staleHeading(Target{Bucket: "gl_broker"}, note, c, fleetView{}, now), rows: rows, now: now, stale: note}

	var table bytes.Buffer
	is.NoErr(printStatus(&table, StatusOptions{}, v))
	out := lines(table.String())
	is.Equal(out[0], "STALE: bucket gl_broker does not answer through nats://127.0.0.1:4222 at 2026-12-03T12:00:00Z: "+
		"no leader for KV_gl_broker (the cluster is electing one, or too few of its servers can reach each other)") // the first line says it is stale, and why
	is.Equal(out[1], "showing n1's own copy of the bucket, up to revision 7, last changed at 2026-12-03T11:58:30Z (1m30s ago): "+
		"not the truth, as it misses whatever the rest of the cluster wrote since") // whose copy, and how old its newest change is
	is.True(strings.Contains(strings.Join(out, "\n"), "/azure/dud/         0     disabled (manual)")) // the copy's rows follow

	var doc bytes.Buffer
	is.NoErr(printStatus(&doc, StatusOptions{JSON: true}, v))
	var got []map[string]any
	is.NoErr(json.Unmarshal(doc.Bytes(), &got))
	is.Equal(len(got), 3) // every router of the default pool
	for _, r := range got {
		is.Equal(r["stale"], map[string]any{"cause": note.Cause, "bucket": "gl_broker", "server": "nats://127.0.0.1:4222",
			"node": "n1", "revision": 7.0, "changed": "2026-12-03T11:58:30Z"}) // every row says it is stale
	}

	doc.Reset()
	v.stale = nil
	for i := range v.rows {
		v.rows[i].Stale = nil
	}
	is.NoErr(printStatus(&doc, StatusOptions{JSON: true}, v))
	is.True(!strings.Contains(doc.String(), `"stale"`)) // a status the bucket answered has no stale field
}

// lines are the lines of s, without the last newline.
func lines(s string) []string { return strings.Split(strings.TrimRight(s, "\n"), "\n") }
