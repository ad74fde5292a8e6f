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
// a direct get of the last message of every key (multi_last), which a
// member of the bucket's stream answers from its own store, leader or not:
// buckets allow direct gets, a server subscribes its member to them once
// it has caught up and keeps it subscribed when it loses its leader. It
// needs no stream info and no consumer, both of which need the leader.
//
// The members answer direct gets in a queue group, and a server picks the
// member for a client's request at random, its own or another server's
// over a route; a route to a server cut off stalls, and the request with
// it. So the request goes out directCopies times at once, and again every
// directRound, and the first whole answer is the copy; each request goes
// to this server's own member with a chance of one in the stream's
// replicas at least. A server that holds no copy passes every request on.
func ReadNodeCopy(ctx context.Context, nc *nats.Conn, bucket string) (NodeCopy, error) {
	stream := "KV_" + bucket
	prefix := "$KV." + bucket + "."
	fail := func(format string, a ...any) (NodeCopy, error) {
		return NodeCopy{}, fmt.Errorf("%w %s: %s", ErrNodeCopy, bucket, fmt.Sprintf(format, a...))
	}
	req, err := json.Marshal(struct {
		MultiLast []string `json:"multi_last"`
	}{[]string{prefix + ">"}})
	if err != nil {
		return NodeCopy{}, err
	}
	// Room for two whole answers; a message that finds no room is dropped,
	// and its answer with it, not the others.
	msgs := make(chan *nats.Msg, 2*(MaxNodeCopyKeys+2))
	inbox := nc.NewInbox()
	sub, err := nc.ChanSubscribe(inbox+".*", msgs)
	if err != nil {
		return fail("%v", err)
	}
	defer sub.Unsubscribe()
	_ = sub.SetPendingLimits(-1, -1) // the channel bounds what waits
	sent := 0
	ask := func() error {
		for range directCopies {
			if err := nc.PublishRequest(jetstream.DefaultAPIPrefix+"DIRECT.GET."+stream, inbox+"."+strconv.Itoa(sent), req); err != nil {
				return err
			}
			sent++
		}
		return nc.Flush()
	}
	if err := ask(); err != nil {
		return fail("%v", err)
	}
	round := time.NewTicker(directRound)
	defer round.Stop()
	answers := map[string][]*nats.Msg{} // by reply subject: the answers begun
	held := 0                           // their bytes
	for {
		var m *nats.Msg
		select {
		case <-ctx.Done():
			return fail("no answer from %s's direct get through this server: %v", stream, ctx.Err())
		case <-round.C:
			if sent < directMost {
				if err := ask(); err != nil {
					return fail("%v", err)
				}
			}
			continue
		case m = <-msgs:
		}
		switch code := m.Header.Get("Status"); code {
		case "":
			if len(answers[m.Subject]) > MaxNodeCopyKeys {
				return fail("more than %d keys", MaxNodeCopyKeys)
			}
			if held += len(m.Data) + len(m.Subject); held > maxCopyBytes {
				return fail("more than %d bytes", maxCopyBytes)
			}
			answers[m.Subject] = append(answers[m.Subject], m)
		case "204": // the end of an answer
			if pending := m.Header.Get("Nats-Num-Pending"); pending != "" && pending != "0" {
				return fail("the server sent part of it (%s keys left)", cut(pending))
			}
			c, err := parseCopy(answers[m.Subject], prefix)
			if err != nil {
				return fail("%v", err)
			}
			if up, err := strconv.ParseUint(m.Header.Get("Nats-UpTo-Sequence"), 10, 64); err == nil {
				c.Revision = max(c.Revision, up)
			}
			return c, nil
		case "404": // no key at all
			return NodeCopy{}, nil
		case "503":
			return fail("no server holding %s answers direct gets through this one", stream)
		default:
			return fail("%s answered %s %s", stream, cut(code), cut(m.Header.Get("Description")))
		}
	}
}

const (
	// directCopies is how many direct gets ReadNodeCopy sends at once, and
	// directRound how often it sends as many again, up to directMost:
	// with the three replicas of a bucket on three servers, all of the
	// first round miss this server's own member one time in 26, and all
	// of eight rounds (2 s) one time in 10^11.
	directCopies = 8
	directRound  = 250 * time.Millisecond
	directMost   = 8 * directCopies
	// maxCopyBytes bounds the answers held at once: a router health
	// bucket holds a few hundred bytes a router.
	maxCopyBytes = 16 << 20
)

// parseCopy makes a NodeCopy of the messages of one multi_last answer.
func parseCopy(msgs []*nats.Msg, prefix string) (NodeCopy, error) {
	var c NodeCopy
	for _, m := range msgs {
		key, ok := strings.CutPrefix(m.Header.Get(jetstream.SubjectHeader), prefix)
		if !ok || key == "" {
			return NodeCopy{}, errors.New("an answer for another subject")
		}
		seq, err := strconv.ParseUint(m.Header.Get(jetstream.SequenceHeader), 10, 64)
		if err != nil {
			return NodeCopy{}, errors.New("an answer without a sequence")
		}
		at, err := time.Parse(time.RFC3339Nano, m.Header.Get(jetstream.TimeStampHeaer))
		if err != nil {
			return NodeCopy{}, errors.New("an answer without a time")
		}
		c.Revision = max(c.Revision, seq)
		if at.After(c.Changed) {
			c.Changed = at
		}
		if removal(m.Header) {
			continue // deleted, purged or expired
		}
		c.Listed = append(c.Listed, listed(key, seq, at, m.Data))
	}
	slices.SortFunc(c.Listed, func(a, b Listed) int { return strings.Compare(a.Router, b.Router) })
	return c, nil
}

// cut bounds a header's text from the wire in an error.
func cut(s string) string {
	const most = 64
	if len(s) > most {
		return s[:most] + "…"
	}
	return s
}
