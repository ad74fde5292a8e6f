package ops

import (
	"bytes"
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
