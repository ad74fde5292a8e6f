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
	label string // Cause's label; "" while the bucket answers
}

// answered records a check's outcome.
func (s *Store) answered(err error) {
	s.reach.mu.Lock()
	defer s.reach.mu.Unlock()
	if err == nil {
		s.reach.LastAnswer, s.reach.Cause, s.reach.label = time.Now(), "", ""
		return
	}
	s.reach.label, s.reach.Cause = s.classify(err)
}

// quorumPeerSilence is how long the leader may not have heard a peer of
// the bucket's stream before the peer no longer counts towards its quorum:
// peers answer the leader's heartbeat every second. A replica says its
// view may be stale only after 2 s of such answers (see replica), so a
// peer must be silent for 4 s before anyone is told.
const quorumPeerSilence = 2 * time.Second

// moveSilence is quorumPeerSilence for a replica choosing a server to move
// to (ProbeToMove): a leader cut off from its peers an instant ago still
// heard them within 2 s when the replica, having waited as long, asks it,
// and would vouch for itself. A peer that answers every heartbeat is heard
// within a second and a half; a stricter question that is wrong costs a
// move a second later, not a false stale.
const moveSilence = 1500 * time.Millisecond

// quorum says why the stream described by info cannot take a write, or
// nil when it can. A stream answers its info request from a member that
// has been leaderless for a while too, and a leader cut off from its
// peers keeps answering until it steps down, after about ten seconds; so
// an answer alone does not prove the bucket works.
func quorum(info *jetstream.StreamInfo) error { return quorumWithin(info, quorumPeerSilence) }

// quorumWithin is quorum, with peers silent for silence or longer not
// counting.
func quorumWithin(info *jetstream.StreamInfo, silence time.Duration) error {
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
		// Active 0 is a peer never heard from (nats-server reports no
		// time for it), not one heard this instant.
		if !p.Offline && p.Active > 0 && p.Active < silence {
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
	_, text := s.classify(err)
	return text
}

// Explain names why a request to bucket failed, in words an operator can
// act on: no leader for its stream, no quorum, JetStream unreachable, not
// connected; never a bare deadline.
func Explain(bucket string, err error) string {
	_, text := classify(bucket, err)
	return text
}

func (s *Store) classify(err error) (label, text string) { return classify(s.Bucket(), err) }

// classify gives err's cause as a metric label (as broker.WriteCauses
// lists them) and in words an operator can act on.
func classify(bucket string, err error) (label, text string) {
	stream := "KV_" + bucket
	var api *jetstream.APIError
	var legacy *nats.APIError // from a KV watcher, which nats.go makes with its older API
	switch {
	case errors.Is(err, ErrConflict):
		return "conflict", err.Error()
	case errors.Is(err, errNoLeader):
		return "no_leader", "no leader for " + stream + " (the cluster is electing one, or too few of its servers can reach each other)"
	case errors.Is(err, errNoQuorum):
		return "no_quorum", "no quorum for " + stream + strings.TrimPrefix(err.Error(), errNoQuorum.Error())
	case errors.As(err, &api) && api.ErrorCode == clusterNotAvailable,
		errors.As(err, &legacy) && legacy.ErrorCode == nats.JSErrCodeJetStreamNotAvailable:
		return "no_leader", "JetStream has no meta leader (the cluster is electing one, or too few of its servers can reach each other)"
	case errors.As(err, &api):
		return "other", fmt.Sprintf("%s: %s", stream, api.Description)
	case errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, nats.ErrConnectionReconnecting), errors.Is(err, nats.ErrDisconnected):
		return "not_connected", "not connected to NATS"
	case errors.Is(err, jetstream.ErrNoStreamResponse):
		// A write no stream took: in a cluster, the stream's leader is
		// gone and none is elected yet.
		return "no_leader", "no server took the write for " + stream + " (its stream has no leader that this server can reach, or JetStream is down)"
	case errors.Is(err, nats.ErrNoResponders), errors.Is(err, jetstream.ErrJetStreamNotEnabled):
		return "no_jetstream", "JetStream does not answer on this server (no server with JetStream for this account can be reached)"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return "timeout", "no answer from " + stream + " within a second (its leader cannot be reached, or the cluster is electing one)"
	}
	return "other", err.Error()
}

// failed wraps err, from a request to the bucket, with its cause (see
// broker.WriteCauses). A request that timed out while the watcher finds
// the bucket without a leader or quorum is put down to that.
func (s *Store) failed(err error) error {
	label, _ := s.classify(err)
	if label == "timeout" {
		s.reach.mu.Lock()
		if s.reach.label != "" {
			label = s.reach.label
		}
		s.reach.mu.Unlock()
	}
	return &causedError{err: err, cause: label}
}

// causedError is an error from the bucket with its cause's label.
type causedError struct {
	err   error
	cause string
}

func (e *causedError) Error() string { return e.err.Error() }
func (e *causedError) Unwrap() error { return e.err }

// Cause is the label broker_kv_write_failures_total counts it by.
func (e *causedError) Cause() string { return e.cause }

// Probe asks bucket's stream, through js, whether it answers with a
// leader and its quorum, as a replica's watcher finds; nil when it does.
func Probe(ctx context.Context, js jetstream.JetStream, bucket string) error {
	return probeWithin(ctx, js, bucket, quorumPeerSilence)
}

// ProbeToMove is Probe for a replica choosing a server to move to: a
// leader counts its peers only if it heard them within moveSilence.
func ProbeToMove(ctx context.Context, js jetstream.JetStream, bucket string) error {
	return probeWithin(ctx, js, bucket, moveSilence)
}

func probeWithin(ctx context.Context, js jetstream.JetStream, bucket string, silence time.Duration) error {
	st, err := js.Stream(ctx, "KV_"+bucket)
	if err != nil {
		return err
	}
	return quorumWithin(st.CachedInfo(), silence)
}

// Leaderless reports whether err, from Probe, says the bucket's stream
// has no leader or its leader no quorum: an answer from a server, unlike
// a timeout, which may only be a slow one.
func Leaderless(err error) bool {
	if err == nil {
		return false
	}
	label, _ := classify("", err)
	return errors.Is(err, errNoLeader) || errors.Is(err, errNoQuorum) || label == "no_leader"
}
