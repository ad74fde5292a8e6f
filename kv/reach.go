package kv

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Reach is whether the bucket answers, as the watcher's checks of its
// stream found (twice a second while all is well; see follow).
type Reach struct {
	// LastAnswer is when the bucket last answered with a leader and its
	// quorum; zero before the first check.
	LastAnswer time.Time
	// Cause is why the last check failed, in words an operator can act
	// on; "" when it did not.
	Cause string
}

// Reach is the bucket's reachability as of the last check.
func (s *Store) Reach() Reach {
	s.reach.mu.Lock()
	defer s.reach.mu.Unlock()
	return s.reach.Reach
}

// reach guards the Store's Reach: written by the watch goroutine, read by
// anyone.
type reach struct {
	mu sync.Mutex
	Reach
}

// answered records a check's outcome.
func (s *Store) answered(err error) {
	s.reach.mu.Lock()
	defer s.reach.mu.Unlock()
	if err == nil {
		s.reach.LastAnswer, s.reach.Cause = time.Now(), ""
		return
	}
	s.reach.Cause = s.cause(err)
}

// quorumPeerSilence is how long the leader may not have heard a peer of
// the bucket's stream before the peer no longer counts towards its quorum:
// peers answer the leader's heartbeat every second.
const quorumPeerSilence = 3 * time.Second

// quorum says why the stream described by info cannot take a write, or
// nil when it can. A stream answers its info request from a member that
// has been leaderless for a while too, and a leader cut off from its
// peers keeps answering until it steps down, after about ten seconds; so
// an answer alone does not prove the bucket works.
func quorum(info *jetstream.StreamInfo) error {
	c := info.Cluster
	if c == nil || len(c.Replicas) == 0 {
		return nil // a single server, or a stream of one replica
	}
	if c.Leader == "" {
		return errNoLeader
	}
	live, n := 1, 1 // the leader
	for _, p := range c.Replicas {
		if p.Pending {
			continue // not a voter yet
		}
		n++
		if !p.Offline && p.Active < quorumPeerSilence {
			live++
		}
	}
	if live <= n/2 {
		return fmt.Errorf("%w (its leader %s hears %d of its %d peers)", errNoQuorum, c.Leader, live-1, n-1)
	}
	return nil
}

// clusterNotAvailable is the server's JSClusterNotAvailErr, "JetStream
// system temporarily unavailable", which nats.go does not name.
const clusterNotAvailable jetstream.ErrorCode = 10008

var (
	errNoLeader = errors.New("no leader")
	errNoQuorum = errors.New("no quorum")
)

// cause names why a request to the bucket failed: no leader for its
// stream, no quorum, JetStream unreachable, not connected; never a bare
// deadline.
func (s *Store) cause(err error) string {
	stream := "KV_" + s.Bucket()
	var api *jetstream.APIError
	switch {
	case errors.Is(err, errNoLeader):
		return "no leader for " + stream + " (the cluster is electing one, or too few of its servers can reach each other)"
	case errors.Is(err, errNoQuorum):
		return "no quorum for " + stream + strings.TrimPrefix(err.Error(), errNoQuorum.Error())
	case errors.As(err, &api) && api.ErrorCode == clusterNotAvailable:
		return "JetStream has no meta leader (the cluster is electing one, or too few of its servers can reach each other)"
	case errors.As(err, &api):
		return fmt.Sprintf("%s: %s", stream, api.Description)
	case errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, nats.ErrConnectionReconnecting), errors.Is(err, nats.ErrDisconnected):
		return "not connected to NATS"
	case errors.Is(err, nats.ErrNoResponders), errors.Is(err, jetstream.ErrNoStreamResponse), errors.Is(err, jetstream.ErrJetStreamNotEnabled):
		return "JetStream does not answer on this server (no server with JetStream for this account can be reached)"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return "no answer from " + stream + " within a second (its leader cannot be reached, or the cluster is electing one)"
	}
	return err.Error()
}

// Probe asks bucket's stream, through js, whether it answers with a
// leader and its quorum, as a replica's watcher finds; nil when it does.
func Probe(ctx context.Context, js jetstream.JetStream, bucket string) error {
	st, err := js.Stream(ctx, "KV_"+bucket)
	if err != nil {
		return err
	}
	return quorum(st.CachedInfo())
}
