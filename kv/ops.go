package kv

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

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
func (s *Store) Scan(ctx context.Context) ([]Listed, error) {
	// The lister's watcher lives until its context ends (nats.go waits
	// for it in a goroutine of its own): end it when the listing is done.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	keys, err := s.kv.ListKeys(ctx)
	if err != nil {
		return nil, noJetStream(fmt.Errorf("list bucket %q: %w", s.Bucket(), err))
	}
	var out []Listed
	for k := range keys.Keys() {
		if !ValidKey(k) {
			// The KV API refuses to read it: read it through the stream.
			l, live, err := s.scanInvalid(ctx, k)
			if err != nil {
				return nil, err
			}
			if live {
				out = append(out, l)
			}
			continue
		}
		e, err := s.kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			continue // expired or deleted since the listing
		}
		if err != nil {
			return nil, fmt.Errorf("get %q: %w", k, err)
		}
		l := Listed{Router: k, Entry: broker.Entry{Revision: e.Revision(), Created: e.Created()}}
		if l.Entry.Record, err = Decode(k, e.Value()); err != nil {
			l.Err = err
		}
		out = append(out, l)
	}
	if err := ctx.Err(); err != nil {
		// The lister stops quietly when ctx ends; a partial list must not
		// pass for the whole bucket.
		return nil, fmt.Errorf("list bucket %q: %w", s.Bucket(), err)
	}
	slices.SortFunc(out, func(a, b Listed) int { return strings.Compare(a.Router, b.Router) })
	return out, nil
}

// scanInvalid is Scan's entry for a key the KV API refuses, read through
// the stream; live is false when it was deleted since the listing.
func (s *Store) scanInvalid(ctx context.Context, key string) (l Listed, live bool, err error) {
	m, err := s.stream.GetLastMsgForSubject(ctx, s.subject(key))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return Listed{}, false, nil
	}
	if err != nil {
		return Listed{}, false, fmt.Errorf("read %q: %w", key, err)
	}
	if m.Header.Get(kvOperation) != "" || m.Header.Get(jetstream.MarkerReasonHeader) != "" {
		return Listed{}, false, nil
	}
	l = Listed{Router: key, Entry: broker.Entry{Revision: m.Sequence, Created: m.Time}, Err: fmt.Errorf("key %q: %w", key, ErrInvalidKey)}
	if r, err := Decode(key, m.Data); err == nil {
		l.Entry.Record = r
	}
	return l, true, nil
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
