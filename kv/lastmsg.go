package kv

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// A bucket's stream allows direct gets, so nats.go reads a key with one
// request that the server hands to a random member of the stream's
// direct-get queue group, its own or another server's over a route. In a
// partition, until the routes to a cut-off member close (4 to 6 s with
// short route pings, minutes with nats-server's defaults), the requests
// that land on it are never answered: a third of the reads through a node
// of the majority timed out, the reads before a replica's compare-and-set
// and `broker disable`'s and `enable`'s among them, just when writes
// matter most.
//
// So a read is hedged, as "The Tail at Scale" has it: one direct get, and
// another each hedgeAfter that brings no answer, up to hedgeMost, the
// first answer winning. A healthy bucket still costs one request a read,
// spread over the members as direct gets are meant to be; every request
// misses a cut-off member of three with a chance of two in three. It
// needs no permission beyond the direct gets the roles already have.
// Reading through the stream's leader instead ($JS.API.STREAM.MSG.GET)
// would need one more permission for every role and bucket, and an ACL
// left without it would not fail a read: nats.go reports a refused publish
// only to the connection's error handler, so every read before a write
// would time out after an upgrade; and it puts every read on the leader's
// JetStream API queue, which direct gets exist to spare.
//
// A follower's answer may be a write or two behind the leader's. Before a
// compare-and-set that costs at most a retry: the leader takes the write
// only at the revision it holds, and says ErrConflict otherwise.
const (
	hedgeAfter = 200 * time.Millisecond
	hedgeMost  = 8
)

// readTimeout bounds a read whose context has no deadline, as nats.go's
// jetstream bounds its own calls (its defaultAPITimeout): nats.go's
// RequestWithContext takes such a context without a word (v1.55.0 checks
// only for nil) and waits for ever on a request no member answers.
const readTimeout = 5 * time.Second

// lastMsg returns the last message on subject in stream, read with hedged
// direct gets through nc, or jetstream.ErrMsgNotFound. It gives
// nats.ErrNoResponders when no member answers direct gets (a stream made
// without allow_direct, a bucket deleted), and an error that is
// context.DeadlineExceeded and names the stream when no member answers in
// time (see hedged).
func lastMsg(ctx context.Context, nc *nats.Conn, stream, subject string) (*jetstream.RawStreamMsg, error) {
	return hedged(ctx, nc, stream, jetstream.DefaultAPIPrefix+"DIRECT.GET."+stream+"."+subject, nil)
}

// msgAt returns the message at sequence seq in stream, read as lastMsg
// reads, or jetstream.ErrMsgNotFound.
func msgAt(ctx context.Context, nc *nats.Conn, stream string, seq uint64) (*jetstream.RawStreamMsg, error) {
	req, err := json.Marshal(struct {
		Seq uint64 `json:"seq"`
	}{seq})
	if err != nil {
		return nil, err
	}
	return hedged(ctx, nc, stream, jetstream.DefaultAPIPrefix+"DIRECT.GET."+stream, req)
}

// getKey is b.Get(ctx, key), or b.GetRevision(ctx, key, rev) when rev is
// not 0, read with hedged direct gets through nc; with nats.go's own when
// the stream answers none.
func getKey(ctx context.Context, nc *nats.Conn, b jetstream.KeyValue, key string, rev uint64) (jetstream.KeyValueEntry, error) {
	if !ValidKey(key) {
		return nil, jetstream.ErrInvalidKey
	}
	subject, stream := "$KV."+b.Bucket()+"."+key, "KV_"+b.Bucket()
	var m *jetstream.RawStreamMsg
	var err error
	if rev == 0 {
		m, err = lastMsg(ctx, nc, stream, subject)
	} else {
		m, err = msgAt(ctx, nc, stream, rev)
		if err == nil && m.Subject != subject {
			return nil, jetstream.ErrKeyNotFound
		}
	}
	switch {
	case errors.Is(err, nats.ErrNoResponders) && rev == 0:
		return b.Get(ctx, key)
	case errors.Is(err, nats.ErrNoResponders):
		return b.GetRevision(ctx, key, rev)
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return nil, jetstream.ErrKeyNotFound
	case err != nil:
		return nil, err
	}
	e := &directEntry{bucket: b.Bucket(), key: key, value: m.Data, revision: m.Sequence, created: m.Time, op: jetstream.KeyValuePut}
	switch m.Header.Get(kvOperation) {
	case "DEL":
		e.op = jetstream.KeyValueDelete
	case "PURGE":
		e.op = jetstream.KeyValuePurge
	}
	if e.op != jetstream.KeyValuePut && rev == 0 {
		return nil, jetstream.ErrKeyDeleted // as b.Get says; b.GetRevision returns the marker
	}
	return e, nil
}

// directEntry is a jetstream.KeyValueEntry read by getKey.
type directEntry struct {
	bucket, key string
	value       []byte
	revision    uint64
	created     time.Time
	op          jetstream.KeyValueOp
}

func (e *directEntry) Bucket() string                  { return e.bucket }
func (e *directEntry) Key() string                     { return e.key }
func (e *directEntry) Value() []byte                   { return e.value }
func (e *directEntry) Revision() uint64                { return e.revision }
func (e *directEntry) Created() time.Time              { return e.created }
func (e *directEntry) Delta() uint64                   { return 0 }
func (e *directEntry) Operation() jetstream.KeyValueOp { return e.op }

// hedged sends the direct get req to stream's subject, and again each
// hedgeAfter without an answer, and returns the first answer. Every
// request it sent has ended when it returns.
//
// A request's error ends the read only when no other is waiting: "no
// responders" says only that no member took direct gets when that request
// was published (a follower catching up, a stream being updated, interest
// not yet carried over a new route), and a reconnect ends the requests
// then waiting but not those sent after it; a request published before
// may still be answered. When ctx ends first (readTimeout after the call
// if ctx has no deadline), the error is ctx's, wrapped in one that names
// the stream, how many requests were sent and for how long: a bare
// "context deadline exceeded" tells an operator nothing.
func hedged(ctx context.Context, nc *nats.Conn, stream, subject string, req []byte) (*jetstream.RawStreamMsg, error) {
	start := time.Now()
	_, bounded := ctx.Deadline()
	var cancel context.CancelFunc
	if bounded {
		ctx, cancel = context.WithCancel(ctx)
	} else {
		ctx, cancel = context.WithTimeout(ctx, readTimeout)
	}
	defer cancel()
	type answer struct {
		m   *nats.Msg
		err error
	}
	answers := make(chan answer, hedgeMost) // room for every request's: none blocks
	sent, waiting := 0, 0
	send := func() {
		sent++
		waiting++
		go func() {
			m, err := nc.RequestWithContext(ctx, subject, req)
			answers <- answer{m, err}
		}()
	}
	defer func() { // end every request still waiting, and wait for it
		cancel()
		for ; waiting > 0; waiting-- {
			<-answers
		}
	}()
	var failed error // the first request's error, while others waited
	gaveUp := func() error {
		var also string
		if !bounded {
			also += fmt.Sprintf(" (a read without a deadline is given %v)", readTimeout)
		}
		if failed != nil {
			also += fmt.Sprintf(" (one said: %v)", failed)
		}
		gets := "direct gets"
		if sent == 1 {
			gets = "direct get"
		}
		return fmt.Errorf("stream %s: no member answered %d %s in %v%s: %w",
			stream, sent, gets, time.Since(start).Round(time.Millisecond), also, ctx.Err())
	}
	send()
	hedge := time.NewTicker(hedgeAfter)
	defer hedge.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, gaveUp()
		case <-hedge.C:
			if sent < hedgeMost {
				send()
			}
		case a := <-answers:
			waiting--
			switch {
			case a.err == nil:
				return directAnswer(a.m)
			case ctx.Err() != nil:
				return nil, gaveUp()
			case waiting > 0:
				failed = cmp.Or(failed, a.err)
			default:
				return nil, a.err
			}
		}
	}
}

// directAnswer makes a message of a direct get's answer, as nats.go does.
func directAnswer(r *nats.Msg) (*jetstream.RawStreamMsg, error) {
	if len(r.Data) == 0 {
		switch code := r.Header.Get("Status"); code {
		case "":
		case "404":
			return nil, jetstream.ErrMsgNotFound
		default:
			return nil, fmt.Errorf("direct get: status %s: %s", cut(code), cut(r.Header.Get("Description")))
		}
	}
	seq, err := strconv.ParseUint(r.Header.Get(jetstream.SequenceHeader), 10, 64)
	if err != nil {
		return nil, errors.New("direct get: an answer without a sequence")
	}
	at, err := time.Parse(time.RFC3339Nano, r.Header.Get(jetstream.TimeStampHeaer))
	if err != nil {
		return nil, errors.New("direct get: an answer without a time")
	}
	subject := r.Header.Get(jetstream.SubjectHeader)
	if subject == "" {
		return nil, errors.New("direct get: an answer without a subject")
	}
	return &jetstream.RawStreamMsg{Subject: subject, Sequence: seq, Header: r.Header, Data: r.Data, Time: at}, nil
}
