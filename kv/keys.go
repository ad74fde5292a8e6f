package kv

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrInvalidKey means a key holds characters NATS's KV API refuses to read
// or write (anything but letters, digits, -/_= and single dots). The
// bucket's stream takes any subject, so a raw publish to
// $KV.<bucket>.<key> can make one: replicas ignore it, as no pool has such
// a router, and Scan lists it with this error.
var ErrInvalidKey = errors.New("not a key NATS's KV API accepts (letters, digits, -/_= and single dots)")

// ValidKey reports whether the KV API reads and writes key.
func ValidKey(key string) bool { return keyRE.MatchString(key) }

// LiteralKey reports whether key could be a key of the bucket at all, valid
// or not: the rest of a subject the stream holds, one or more literal
// tokens, with no whitespace, no empty token and no wildcard token. Only
// such a key may be read or removed raw: a wildcard would read or remove
// other keys.
func LiteralKey(key string) bool {
	if key == "" || strings.ContainsAny(key, " \t\r\n\f\v\x00") {
		return false
	}
	for tok := range strings.SplitSeq(key, ".") {
		if tok == "" || tok == "*" || tok == ">" {
			return false
		}
	}
	return true
}

// PurgeKey removes key and its history, whatever it holds, as `nats kv
// purge` does: through the stream, so that it works for a key the KV API
// refuses (see ErrInvalidKey) too, and every watcher hears a purge. It
// reports false, writing nothing, when the bucket holds no live value
// under key. It is for an operator removing a key that is not a router;
// a router's key is enabled with Delete, which keeps the memo.
func (s *Store) PurgeKey(ctx context.Context, key string) (removed bool, err error) {
	if !LiteralKey(key) {
		return false, fmt.Errorf("purge %q: not a key: it has a space, an empty token or a wildcard token", key)
	}
	m, err := s.last(ctx, key)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read %q: %w", key, err)
	}
	if removal(m.Header) {
		return false, nil
	}
	// What KeyValue.Purge writes: a marker that rolls up, and so removes,
	// every earlier message of the key. KV buckets allow roll-ups.
	p := &nats.Msg{Subject: s.subject(key), Header: nats.Header{}}
	p.Header.Set(kvOperation, "PURGE")
	p.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	if _, err := s.js.PublishMsg(ctx, p); err != nil {
		return false, fmt.Errorf("purge %q: %w", key, err)
	}
	return true, nil
}
