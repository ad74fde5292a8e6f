package replica

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
)

func rev(id string, n uint64, refused string) ReplicaRevision {
	return ReplicaRevision{ID: id, Revision: &n, Refused: refused}
}

func TestReplicasAreHeldToTheBucketsNewestOrElseTheHighestRun(t *testing.T) {
	for _, tc := range []struct {
		name    string
		rs      []ReplicaRevision
		latest  uint64
		drift   []string // each replica's, in ID order
		summary string
	}{
		{name: "in step with the bucket", rs: []ReplicaRevision{rev("b", 4, ""), rev("a", 4, "")}, latest: 4,
			drift: []string{"", ""}, summary: "every replica heard runs revision 4, the newest in bucket gl_broker_config"},
		{name: "one behind the bucket", rs: []ReplicaRevision{rev("a", 4, ""), rev("b", 3, "")}, latest: 4,
			drift:   []string{"", "behind: runs revision 3, not 4"},
			summary: "DRIFT: 1 of 2 replicas out of step with revision 4, the newest in bucket gl_broker_config; 1 replica on revision 3, 1 on revision 4"},
		{name: "all behind the bucket", rs: []ReplicaRevision{rev("a", 3, ""), rev("b", 3, "")}, latest: 4,
			drift:   []string{"behind: runs revision 3, not 4", "behind: runs revision 3, not 4"},
			summary: "DRIFT: 2 of 2 replicas out of step with revision 4, the newest in bucket gl_broker_config; 2 replicas on revision 3"},
		{name: "ahead of the bucket", rs: []ReplicaRevision{rev("a", 9, "")}, latest: 4,
			drift:   []string{"runs revision 9, which is not the newest in bucket gl_broker_config (4)"},
			summary: "DRIFT: 1 of 1 replicas out of step with revision 4, the newest in bucket gl_broker_config; 1 replica on revision 9"},
		{name: "refusing", rs: []ReplicaRevision{rev("a", 3, "refused revision 4: weight"), rev("b", 3, "refused revision 4: weight")}, latest: 4,
			drift:   []string{"refused revision 4: weight", "refused revision 4: weight"},
			summary: "DRIFT: 2 of 2 replicas out of step with revision 4, the newest in bucket gl_broker_config (2 refusing a newer revision); 2 replicas on revision 3"},
		{name: "no bucket: the highest run", rs: []ReplicaRevision{rev("a", 0, ""), rev("b", 2, ""), {ID: "c"}},
			drift:   []string{"behind: runs revision 0, not 2", "", ""},
			summary: "DRIFT: 1 of 2 replicas out of step with revision 2, the highest any replica runs; 1 replica on revision 0, 1 on revision 2"},
		{name: "no bucket, own settings", rs: []ReplicaRevision{rev("a", 0, ""), rev("b", 0, "")},
			drift: []string{"", ""}, summary: "every replica heard runs revision 0: its own pools and settings, no configuration bucket"},
		{name: "told none", rs: []ReplicaRevision{{ID: "a"}}, drift: []string{""}, summary: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			is := is.New(t)
			f := MarkRevisions(tc.rs, "gl_broker_config", tc.latest)
			var drift []string
			for _, r := range f.Replicas {
				drift = append(drift, r.Drift)
			}
			is.Equal(drift, tc.drift)         // each replica marked
			is.Equal(f.Summary(), tc.summary) // in one line
		})
	}
}

func TestTheRevisionsNamedAndCountedAreBounded(t *testing.T) {
	is := is.New(t)
	var rs []ReplicaRevision
	for i := range 20 {
		rs = append(rs, rev(fmt.Sprint(i), uint64(i), ""), rev(fmt.Sprint(i)+"b", uint64(i%3), ""))
	}
	rs = append(rs, ReplicaRevision{ID: "old"})
	f := MarkRevisions(rs, "", 0)
	says := f.Summary()
	is.True(strings.HasSuffix(says, ", and 15 more revisions")) // five named, the rest counted
	labels, counts := f.perRevision(maxRevisionSeries)
	is.Equal(len(labels), maxRevisionSeries+2)                         // at most 8 series, then other and unknown
	is.Equal(labels[:3], []string{"0", "1", "2"})                      // the most populous first
	is.Equal(labels[maxRevisionSeries:], []string{"other", "unknown"}) // the rest counted
	total := 0
	for _, n := range counts {
		total += n
	}
	is.Equal(total, len(rs)) // every replica counted once
}

func TestHeardRevisionsAreBoundedAndForgottenWhenSilent(t *testing.T) {
	is := is.New(t)
	var h heardRevisions
	now := time.Now()
	for i := range 2 * maxHeardRevisions {
		h.hear(fmt.Sprint("forged-", i), &ConfigTold{Revision: 1, Refused: strings.Repeat("x", 10_000)}, nil, now, broker.PeerSilence)
	}
	list := h.list(now)
	is.Equal(len(list), maxHeardRevisions) // bounded
	is.True(len(list[0].Refused) < 300)    // each refusal cut
	later := now.Add(broker.PeerSilence + time.Millisecond)
	h.hear("real", &ConfigTold{Revision: 2}, nil, later, broker.PeerSilence)
	list = h.list(later)
	is.Equal(len(list), 1) // the silent ones forgotten, a new one heard
	is.Equal(list[0].ID, "real")
}
