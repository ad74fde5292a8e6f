package kv

import (
	"testing"

	"github.com/nats-io/nats.go/jetstream"
)

// TestScanKeepsAConsumerOnlyOnAMemberHoldingTheWholeStream: the leader,
// or a member the leader counts current and online; not a member catching
// up (after a heal), an offline one, or a server that is no member.
func TestScanKeepsAConsumerOnlyOnAMemberHoldingTheWholeStream(t *testing.T) {
	cluster := &jetstream.ClusterInfo{Leader: "n2", Replicas: []*jetstream.PeerInfo{
		{Name: "n1", Current: false, Lag: 12}, // rejoined after a heal, catching up
		{Name: "n3", Current: true},
		{Name: "n4", Current: true, Offline: true},
	}}
	for _, c := range []struct {
		server  string
		cluster *jetstream.ClusterInfo
		want    bool
	}{
		{"n2", cluster, true},
		{"n3", cluster, true},
		{"n1", cluster, false},
		{"n4", cluster, false},
		{"n9", cluster, false},
		{"", cluster, false},
		{"", &jetstream.ClusterInfo{}, false}, // no leader named: nothing to trust
		// A member that lost its leader answers for itself, current.
		{"n1", &jetstream.ClusterInfo{Replicas: []*jetstream.PeerInfo{{Name: "n1", Current: true}, {Name: "n2"}}}, false},
		{"solo", nil, true}, // one server: its copy is the bucket
	} {
		if got := currentMember(c.server, c.cluster); got != c.want {
			t.Errorf("currentMember(%q) = %v, want %v", c.server, got, c.want)
		}
	}
}
