package kv

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/broker"
)

// This file holds what operators' tools need beyond what replicas use:
// replicas only ever compare-and-set, while a person taking a router out by
// hand means "whatever is there now", and a person looking at the bucket
// must see every key, including one they wrote badly by hand.

// Listed is one live key of the bucket as a tool sees it.
type Listed struct {
	// Router is the key.
	Router string
	// Entry is the record and its revision. When Err is set, only
	// Entry.Revision is meaningful.
	Entry broker.Entry
	// Err says why the value is not a record this package reads; replicas
	// ignore such a key.
	Err error
}

// Scan returns every live key in key order, readable or not, so that
// nothing in the bucket is hidden from the person looking.
//
// It reads every value through one consumer of its own, not key by key
// with direct gets: the members of the bucket's stream answer direct gets
// in a queue group, and a server passes a request to one at random, so
// while one member is cut off from the others (its routes stalled, not yet
// closed) a third of the gets went to it and never came back, and status
// through a server of the majority timed out.
//
// The server puts such a consumer on any member of the stream it counts
// as online, one still catching up too (after a partition heals, the
// member that was cut off rejoins behind the others), and the consumer
// lists that member's copy: status through the healed server drew the
// bucket without the majority's disable, unmarked. So Scan keeps a
// consumer only on the stream's leader or on a member the leader counts
// as current, and otherwise makes another a moment later, until ctx ends;
// and only when that leader has heard most of its peers within 2 s: a
// leader cut off until a moment ago still answers for the stream and
// counts itself current (TestAScanThroughANodeJustHealedListsWhatTheMajorityWrote
// failed so, 9 ms after the heal, beside two spin loops).
func (s *Store) Scan(ctx context.Context) ([]Listed, error) {
	for n := 1; ; n++ {
		out, err := s.scanOnce(ctx)
		if !errors.Is(err, errBehind) {
			return out, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("list bucket %q: %w, and no other member took a consumer within the time: %w", s.Bucket(), err, ctx.Err())
		case <-time.After(broker.Backoff(10*time.Millisecond, 250*time.Millisecond, n)):
		}
	}
}

// errBehind says a consumer landed on a member of the bucket's stream
// that may not hold all of it.
var errBehind = errors.New("its consumer landed on a member of the stream catching up with the leader, or the stream's leader has not heard most of its peers lately")

// scanOnce lists the bucket through one consumer, or says errBehind.
func (s *Store) scanOnce(ctx context.Context) ([]Listed, error) {
	fail := func(err error) ([]Listed, error) {
		return nil, noJetStream(fmt.Errorf("list bucket %q: %w", s.Bucket(), err))
	}
	// Subscribed before the consumer is made, so that nothing it pushes
	// at once is missed.
	nc := s.js.Conn()
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return fail(err)
	}
	defer sub.Unsubscribe()
	cons, err := s.stream.CreatePushConsumer(ctx, jetstream.ConsumerConfig{
		DeliverSubject: inbox,
		DeliverPolicy:  jetstream.DeliverLastPerSubjectPolicy,
		AckPolicy:      jetstream.AckNonePolicy,
		FilterSubject:  s.subject(">"),
		MemoryStorage:  true,
		Replicas:       1,
		// The server removes it after this should the delete below not
		// reach it.
		InactiveThreshold: 30 * time.Second,
	})
	if err != nil {
		return fail(err)
	}
	info := cons.CachedInfo()
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = s.stream.DeleteConsumer(dctx, info.Name)
	}()
	if info.Cluster != nil {
		si, err := s.stream.Info(ctx)
		if err != nil {
			return fail(err)
		}
		// A leader cut off until a moment ago answers for the stream
		// until it hears its peers' newer term: it vouches only once it
		// has heard most of them within quorumPeerSilence.
		if !currentMember(info.Cluster.Leader, si.Cluster) || quorum(si) != nil {
			return nil, errBehind
		}
	}
	var out []Listed
	for left := info.NumPending; left > 0; {
		m, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			// A partial list must not pass for the whole bucket.
			return fail(err)
		}
		meta, err := m.Metadata()
		if err != nil {
			continue // not a message of the stream; none other is asked for
		}
		left = meta.NumPending
		if removal(m.Header) {
			continue // a delete, a purge or the server's marker of an expiry
		}
		out = append(out, listed(strings.TrimPrefix(m.Subject, s.subject("")), meta.Sequence.Stream, meta.Timestamp, m.Data))
	}
	slices.SortFunc(out, func(a, b Listed) int { return strings.Compare(a.Router, b.Router) })
	return out, nil
}

// currentMember says whether the member of a stream on server holds all
// of the stream as its leader knows it, by the stream's cluster c as the
// leader tells it: the leader itself, or a member it counts as current.
// A stream of one server (no cluster) is current on it. An answer naming
// no leader vouches for nothing: a member that lost its leader answers
// stream info itself, counting itself current, and the member just
// healed did so before it heard the leader again.
func currentMember(server string, c *jetstream.ClusterInfo) bool {
	switch {
	case c == nil:
		return true
	case c.Leader == "":
		return false
	case server == c.Leader:
		return true
	}
	for _, p := range c.Replicas {
		if p.Name == server {
			return p.Current && !p.Offline
		}
	}
	return false
}

// keyRE is what JetStream accepts as a key, with no leading or trailing dot.
var keyRE = regexp.MustCompile(`^[-/_=a-zA-Z0-9]+(\.[-/_=a-zA-Z0-9]+)*$`)

// Put writes r under its router's key whatever the key holds now, a live
// record, an unreadable one or nothing, and returns the new revision. It is
// for an operator's disable, which must win over an automatic one; replicas
// never use it. Automatic writes compare-and-set, so one racing with Put
// fails and its replica adopts r.
func (s *Store) Put(ctx context.Context, r broker.Record) (uint64, error) {
	if !keyRE.MatchString(r.Router) {
		return 0, fmt.Errorf("put %q: not a valid key", r.Router)
	}
	val, err := Encode(r)
	if err != nil {
		return 0, err
	}
	// KeyValue.Put takes no TTL, so publish to the key's subject as Update
	// does, without the compare-and-set header.
	m := &nats.Msg{Subject: "$KV." + s.kv.Bucket() + "." + r.Router, Data: val}
	var opts []jetstream.PublishOpt
	if ttl := s.ttl(r); ttl > 0 {
		opts = append(opts, jetstream.WithMsgTTL(ttl))
	}
	ack, err := s.js.PublishMsg(ctx, m, opts...)
	if err != nil {
		return 0, fmt.Errorf("put %q: %w", r.Router, err)
	}
	s.tell("put", r, ack.Sequence)
	return ack.Sequence, nil
}

// listed is a key's value as Scan and ReadNodeCopy list it: a key the KV
// API refuses is listed with ErrInvalidKey (replicas ignore it), and its
// record, when it reads, is shown all the same.
func listed(key string, rev uint64, created time.Time, data []byte) Listed {
	l := Listed{Router: key, Entry: broker.Entry{Revision: rev, Created: created}}
	r, err := Decode(key, data)
	switch {
	case !ValidKey(key):
		l.Err = fmt.Errorf("key %q: %w", key, ErrInvalidKey)
		if err == nil {
			l.Entry.Record = r
		}
	case err != nil:
		l.Err = err
	default:
		l.Entry.Record = r
	}
	return l
}
