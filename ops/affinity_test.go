package ops

import (
	"bytes"
	"math"
	"strings"
	"testing"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/replica"
)

func TestTheSessionsSectionShowsWhatWasToldAsTextAndItsSumCannotWrap(t *testing.T) {
	is := is.New(t)
	forged := &replica.SessionsTold{Keyed: math.MaxUint64, NoKey: 1, Header: "Session-Id\x1b[2J\u202e"}
	fv := fleetView{configs: []replica.ReplicaRevision{{ID: "evil\x1b]0;pwned\x07", Sessions: forged.Heard()}}}
	rows := []statusRow{
		{Ingress: "/s/", Router: "/s/a/", Affinity: fv.affinity(broker.Affinity{Session: true})},
		{Ingress: "/s/", Router: "/s/b/", Affinity: fv.affinity(broker.Affinity{Session: true})},
		{Ingress: "/plain/", Router: "/plain/a/"},
	}
	f := replica.Revisions{Replicas: append(fv.configs, replica.ReplicaRevision{ID: "replica-1", Sessions: &replica.SessionsTold{Keyed: 5, Spilled: 1}})}
	var buf bytes.Buffer
	is.NoErr(writeSessions(&buf, rows, f))
	out := buf.String()
	for _, want := range []string{
		`session affinity: /s/ by gecholog's session header Session-Id\u001b[2J\u202e, load factor 2` + "\n", // once per pool, escaped
		"sessions since each replica started: 18446744073709551615 keyed (1 of them spilled to the next router in their order), 1 without a key, over 2 replicas\n",
		`evil\u001b]0;pwned\u0007`,
	} {
		if !strings.Contains(out, want) {
			t.Fatalf("the section does not say %q; it says:\n%s", want, out)
		}
	}
	is.True(!strings.ContainsAny(out, "\x1b\u202e\x07")) // nothing in it acts on a terminal

	buf.Reset()
	is.NoErr(writeSessions(&buf, rows[2:], f))
	is.Equal(buf.String(), "") // no pool with affinity, no section
}
