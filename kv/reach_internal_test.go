package kv

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestQuorumNeedsALeaderHearingMostOfItsPeers(t *testing.T) {
	peer := func(active time.Duration, offline bool) *jetstream.PeerInfo {
		return &jetstream.PeerInfo{Name: "n", Current: true, Active: active, Offline: offline}
	}
	for _, c := range []struct {
		name string
		info jetstream.StreamInfo
		want error
	}{
		{"a single server", jetstream.StreamInfo{}, nil},
		{"one replica in a cluster", jetstream.StreamInfo{Cluster: &jetstream.ClusterInfo{Leader: "n1"}}, nil},
		{"no leader", jetstream.StreamInfo{Cluster: &jetstream.ClusterInfo{Replicas: []*jetstream.PeerInfo{peer(0, false), peer(0, false)}}}, errNoLeader},
		{"both peers heard", jetstream.StreamInfo{Cluster: &jetstream.ClusterInfo{Leader: "n1", Replicas: []*jetstream.PeerInfo{peer(500*time.Millisecond, false), peer(1900*time.Millisecond, false)}}}, nil},
		{"one peer of two silent", jetstream.StreamInfo{Cluster: &jetstream.ClusterInfo{Leader: "n1", Replicas: []*jetstream.PeerInfo{peer(500*time.Millisecond, false), peer(time.Minute, false)}}}, nil},
		{"both peers silent", jetstream.StreamInfo{Cluster: &jetstream.ClusterInfo{Leader: "n1", Replicas: []*jetstream.PeerInfo{peer(2*time.Second, false), peer(time.Minute, false)}}}, errNoQuorum},
		{"one offline, one silent", jetstream.StreamInfo{Cluster: &jetstream.ClusterInfo{Leader: "n1", Replicas: []*jetstream.PeerInfo{peer(0, true), peer(4*time.Second, false)}}}, errNoQuorum},
		{"peers never heard from", jetstream.StreamInfo{Cluster: &jetstream.ClusterInfo{Leader: "n1", Replicas: []*jetstream.PeerInfo{peer(0, false), peer(0, false)}}}, errNoQuorum},
		{"a pending peer is no voter", jetstream.StreamInfo{Cluster: &jetstream.ClusterInfo{Leader: "n1", Replicas: []*jetstream.PeerInfo{peer(time.Second, false), {Pending: true, Active: time.Hour}}}}, nil},
	} {
		if got := quorum(&c.info); !errors.Is(got, c.want) || (got == nil) != (c.want == nil) {
			t.Errorf("%s: quorum = %v, want %v", c.name, got, c.want)
		}
	}
}

// TestALeaderCutOffAnInstantAgoDoesNotVouchForItselfToAReplicaMoving: a
// replica asks where to move once its own bucket has been silent for 2 s,
// when a leader cut off as long ago still heard its peers within 2 s.
func TestALeaderCutOffAnInstantAgoDoesNotVouchForItselfToAReplicaMoving(t *testing.T) {
	cutOff := jetstream.StreamInfo{Cluster: &jetstream.ClusterInfo{Leader: "n1", Replicas: []*jetstream.PeerInfo{
		{Name: "n2", Current: true, Active: 1900 * time.Millisecond}, {Name: "n3", Current: true, Active: 1950 * time.Millisecond}}}}
	if err := quorum(&cutOff); err != nil {
		t.Fatalf("quorum = %v: the watcher's check counts peers heard within 2 s", err)
	}
	if err := quorumWithin(&cutOff, moveSilence); !errors.Is(err, errNoQuorum) {
		t.Errorf("quorumWithin(moveSilence) = %v, want no quorum", err)
	}
	healthy := jetstream.StreamInfo{Cluster: &jetstream.ClusterInfo{Leader: "n2", Replicas: []*jetstream.PeerInfo{
		{Name: "n3", Current: true, Active: time.Second}, {Name: "n1", Current: false, Active: time.Minute}}}}
	if err := quorumWithin(&healthy, moveSilence); err != nil {
		t.Errorf("a leader hearing one of two peers each heartbeat: quorumWithin = %v, want nil", err)
	}
}

// TestLeaderlessTellsAnAnswerWithoutALeaderFromNoAnswer: the server said
// the bucket's stream has no leader or no quorum, or that JetStream has
// none (as a KV watcher's older API says it too); a timeout says nothing.
func TestLeaderlessTellsAnAnswerWithoutALeaderFromNoAnswer(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{errNoLeader, true},
		{fmt.Errorf("%w (its leader n1 hears 0 of its 2 peers)", errNoQuorum), true},
		{fmt.Errorf("list bucket: %w", &jetstream.APIError{ErrorCode: clusterNotAvailable}), true},
		{fmt.Errorf("list bucket: %w", &nats.APIError{ErrorCode: nats.JSErrCodeJetStreamNotAvailable, Description: "JetStream system temporarily unavailable"}), true},
		{context.DeadlineExceeded, false},
		{nats.ErrTimeout, false},
		{errors.New("nats: permissions violation"), false},
	} {
		if got := Leaderless(c.err); got != c.want {
			t.Errorf("Leaderless(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
