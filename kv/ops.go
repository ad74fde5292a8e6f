package kv

import (
	"context"
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
// It reads every value through one consumer on the bucket's leader, not
// key by key with direct gets: the members of the bucket's stream answer
// direct gets in a queue group, and a server passes a request to one at
// random, so while one member is cut off from the others (its routes
// stalled, not yet closed) a third of the gets went to it and never came
// back, and status through a server of the majority timed out.
func (s *Store) Scan(ctx context.Context) ([]Listed, error) {
	// The watcher lives until its context ends (nats.go waits for it in a
	// goroutine of its own): end it when the listing is done.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := s.kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, noJetStream(fmt.Errorf("list bucket %q: %w", s.Bucket(), err))
	}
	defer w.Stop()
	var out []Listed
	for {
		var e jetstream.KeyValueEntry
		select {
		case <-ctx.Done():
			// A partial list must not pass for the whole bucket.
			return nil, fmt.Errorf("list bucket %q: %w", s.Bucket(), ctx.Err())
		case e = <-w.Updates():
		}
		if e == nil {
			break // every value the bucket held when the watch began
		}
		out = append(out, listed(e.Key(), e.Revision(), e.Created(), e.Value()))
	}
	if err := ctx.Err(); err != nil {
		// The watcher closes its updates when ctx ends, which reads as the
		// end of the values.
		return nil, fmt.Errorf("list bucket %q: %w", s.Bucket(), err)
	}
	slices.SortFunc(out, func(a, b Listed) int { return strings.Compare(a.Router, b.Router) })
	return out, nil
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
