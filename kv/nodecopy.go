package kv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/broker"
)

// NodeCopy is a bucket as the copy of its stream on one server holds it,
// read without the stream's leader: what a server cut off from the rest
// of its cluster still knows. It may miss every write since the server
// lost its peers, so it is never the truth; it is what `broker status`
// shows, marked stale, when the bucket has no leader.
type NodeCopy struct {
	// Listed is every live key in key order, as Scan lists them.
	Listed []Listed
	// Revision is the last revision the copy holds (0: none).
	Revision uint64
	// Changed is when the newest change the copy holds was written, a
	// delete among them (zero: it holds none).
	Changed time.Time
}

// MaxNodeCopyKeys bounds the keys a node's copy is read with: the server
// refuses a direct read of more (its maxAllowedResponses in stream.go), and
// a router health bucket holds one key per router.
const MaxNodeCopyKeys = 1024

// ErrNodeCopy means the server's copy of the bucket could not be read.
var ErrNodeCopy = errors.New("cannot read this server's copy of the bucket")

// ReadNodeCopy reads bucket's copy on the server nc is connected to with
// one direct get of the last message of every key (multi_last), which a
// member of the bucket's stream answers from its own store, leader or not:
// buckets allow direct gets, a server subscribes its members to them once
// they have caught up and keeps them subscribed when it loses its leader,
// and NATS prefers a queue subscriber on the requester's own server. It
// needs no stream info and no consumer, both of which need the leader.
// A server that holds no copy of the stream passes the request on to one
// that does, over the routes it still has.
func ReadNodeCopy(ctx context.Context, nc *nats.Conn, bucket string) (NodeCopy, error) {
	stream := "KV_" + bucket
	prefix := "$KV." + bucket + "."
	req, err := json.Marshal(struct {
		MultiLast []string `json:"multi_last"`
	}{[]string{prefix + ">"}})
	if err != nil {
		return NodeCopy{}, err
	}
	// Room for every message the server may send, so none is dropped as
	// a slow consumer's.
	msgs := make(chan *nats.Msg, MaxNodeCopyKeys+2)
	inbox := nc.NewInbox()
	sub, err := nc.ChanSubscribe(inbox, msgs)
	if err != nil {
		return NodeCopy{}, fmt.Errorf("%w %s: %w", ErrNodeCopy, bucket, err)
	}
	defer sub.Unsubscribe()
	// One more than the server sends, and the end of the batch.
	if err := sub.AutoUnsubscribe(MaxNodeCopyKeys + 2); err != nil {
		return NodeCopy{}, fmt.Errorf("%w %s: %w", ErrNodeCopy, bucket, err)
	}
	if err := nc.PublishRequest(jetstream.DefaultAPIPrefix+"DIRECT.GET."+stream, inbox, req); err != nil {
		return NodeCopy{}, fmt.Errorf("%w %s: %w", ErrNodeCopy, bucket, err)
	}
	var c NodeCopy
	for n := 0; ; n++ {
		var m *nats.Msg
		select {
		case <-ctx.Done():
			return NodeCopy{}, fmt.Errorf("%w %s: no answer from %s's direct get: %w", ErrNodeCopy, bucket, stream, ctx.Err())
		case m = <-msgs:
		}
		if n > MaxNodeCopyKeys {
			return NodeCopy{}, fmt.Errorf("%w %s: more than %d keys", ErrNodeCopy, bucket, MaxNodeCopyKeys)
		}
		switch code := m.Header.Get("Status"); code {
		case "":
		case "204": // the end of the batch
			if pending := m.Header.Get("Nats-Num-Pending"); pending != "" && pending != "0" {
				return NodeCopy{}, fmt.Errorf("%w %s: the server sent part of it (%s keys left)", ErrNodeCopy, bucket, cut(pending))
			}
			if up, err := strconv.ParseUint(m.Header.Get("Nats-UpTo-Sequence"), 10, 64); err == nil {
				c.Revision = max(c.Revision, up)
			}
			slices.SortFunc(c.Listed, func(a, b Listed) int { return strings.Compare(a.Router, b.Router) })
			return c, nil
		case "404": // no key at all
			return c, nil
		case "503":
			return NodeCopy{}, fmt.Errorf("%w %s: no server holding %s answers direct gets through this one", ErrNodeCopy, bucket, stream)
		default:
			return NodeCopy{}, fmt.Errorf("%w %s: %s answered %s %s", ErrNodeCopy, bucket, stream, cut(code), cut(m.Header.Get("Description")))
		}
		key, ok := strings.CutPrefix(m.Header.Get(jetstream.SubjectHeader), prefix)
		if !ok || key == "" {
			return NodeCopy{}, fmt.Errorf("%w %s: an answer for another subject", ErrNodeCopy, bucket)
		}
		seq, err := strconv.ParseUint(m.Header.Get(jetstream.SequenceHeader), 10, 64)
		if err != nil {
			return NodeCopy{}, fmt.Errorf("%w %s: an answer without a sequence", ErrNodeCopy, bucket)
		}
		at, err := time.Parse(time.RFC3339Nano, m.Header.Get(jetstream.TimeStampHeaer))
		if err != nil {
			return NodeCopy{}, fmt.Errorf("%w %s: an answer without a time", ErrNodeCopy, bucket)
		}
		c.Revision = max(c.Revision, seq)
		if at.After(c.Changed) {
			c.Changed = at
		}
		if m.Header.Get(kvOperation) != "" || m.Header.Get(jetstream.MarkerReasonHeader) != "" {
			continue // deleted, purged or expired
		}
		l := Listed{Router: key, Entry: broker.Entry{Revision: seq, Created: at}}
		r, err := Decode(key, m.Data)
		switch {
		case !ValidKey(key):
			// As Scan lists it: replicas ignore it, and the record, when
			// it reads, is shown.
			l.Err = fmt.Errorf("key %q: %w", key, ErrInvalidKey)
			if err == nil {
				l.Entry.Record = r
			}
		case err != nil:
			l.Err = err
		default:
			l.Entry.Record = r
		}
		c.Listed = append(c.Listed, l)
	}
}

// cut bounds a header's text from the wire in an error.
func cut(s string) string {
	const most = 64
	if len(s) > most {
		return s[:most] + "…"
	}
	return s
}
