package kv

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gecholog/broker/broker"
)

// The news: every write this package makes to the bucket is told at once
// on a plain NATS subject (Config.News) as well, and so is a disable a
// replica is about to write (Store.Announce). A watcher's ordered consumer
// lives on one server, and a new one cannot be made while a cluster elects
// a JetStream meta leader; a write cannot land while the bucket's stream
// elects a leader. Both take seconds. Plain subjects need neither, so the
// news reaches every replica through the routes that are left.
//
// Whoever may publish on the bus can forge the news, so what is told after
// a write landed is only a hint: the listener reads the key from the
// bucket and delivers what the bucket says, with the bucket's revision;
// the revision and record in the message are never taken. A disable is
// also announced before its write (Announce): that is heard at once as
// provisional, so that a replica avoids the router on its word, for a
// bounded time only, until the bucket's word (see broker.Event). A plain
// subscription to the bucket's own subjects would not do, as it also
// delivers writes the stream refused.

// The headers of a news message; its body is the record or memo, in the
// record format.
const (
	newsKey      = "Kv-News-Key"
	newsOp       = "Kv-News-Op" // put, del, pending, or ask
	newsRevision = "Kv-News-Revision"
	newsCreated  = "Kv-News-Created" // when the write landed, by the writer's clock
	newsFrom     = "Kv-News-From"
)

// maxNews bounds the news message read: a record is a few hundred bytes.
const maxNews = 64 << 10

// Announce tells every replica listening to the news of a disable this
// one has decided and is writing. It does not wait. Until this store has
// written the router, it tells it again to any store that asks (see
// Resync): one that was reconnecting when the news went out.
func (s *Store) Announce(r broker.Record) {
	s.mu.Lock()
	s.pending[r.Router] = r
	s.mu.Unlock()
	s.tell("pending", r, 0)
}

// ask asks every other store for the disables it has announced and not
// yet written, after this one reconnected and may have missed them.
func (s *Store) ask() {
	if s.cfg.News == "" {
		return
	}
	m := &nats.Msg{Subject: s.cfg.News, Header: nats.Header{}}
	m.Header.Set(newsOp, "ask")
	m.Header.Set(newsFrom, s.owner)
	_ = s.js.Conn().PublishMsg(m)
}

// retellEvery is how often a store tells again the disables it announced
// and has not written yet, while a leader election holds the write up. A
// replica that reconnects asks for them at once, but its subscription
// reaches the other nodes a moment after its question may: this catches
// what the answer missed.
const retellEvery = 250 * time.Millisecond

// retell tells the pending disables again every retellEvery until ctx ends.
func (s *Store) retell(ctx context.Context) {
	t := time.NewTicker(retellEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.answer()
		}
	}
}

// settled forgets the disable this store announced for router when the
// bucket has since kept a change of it (created): this replica's write
// landed, or lost to another's.
func (s *Store) settled(router string, created time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r, ok := s.pending[router]; ok && !created.Before(r.At) {
		delete(s.pending, router)
	}
}

// answer tells again the announced disables not yet written, and forgets
// those that have ended.
func (s *Store) answer() {
	now := time.Now()
	s.mu.Lock()
	var again []broker.Record
	for k, r := range s.pending {
		if r.ActiveAt(now) {
			again = append(again, r)
		} else {
			delete(s.pending, k)
		}
	}
	s.mu.Unlock()
	for _, r := range again {
		s.tell("pending", r, 0)
	}
}

// tell publishes news of r (a record, or with op del a memo). It does not
// wait for the server; a failure only costs the others the early word,
// and the watcher still brings the change.
func (s *Store) tell(op string, r broker.Record, rev uint64) {
	if s.cfg.News == "" {
		return
	}
	if op != "pending" {
		s.mu.Lock()
		delete(s.pending, r.Router) // written: the watchers tell the rest
		s.mu.Unlock()
	}
	if err := tellOn(s.js.Conn(), s.cfg.News, s.owner, op, r, rev); err != nil {
		s.log.Debug("could not tell the news", slog.String("router", r.Router), slog.Any("error", err))
	}
}

// tellOn publishes news of r on news through nc, from owner.
func tellOn(nc *nats.Conn, news, owner, op string, r broker.Record, rev uint64) error {
	m := &nats.Msg{Subject: news, Header: nats.Header{}}
	m.Header.Set(newsKey, r.Router)
	m.Header.Set(newsOp, op)
	m.Header.Set(newsFrom, owner)
	if rev > 0 {
		m.Header.Set(newsRevision, strconv.FormatUint(rev, 10))
		m.Header.Set(newsCreated, time.Now().UTC().Format(time.RFC3339Nano))
	}
	var err error
	if m.Data, err = Encode(r); err != nil {
		return err
	}
	return nc.PublishMsg(m)
}

// AnnounceOn is Store.Announce for a writer with no store open yet, from
// owner: an operator's disable, while a cluster electing the bucket's
// leader holds the store's opening up. It tells once, and does not wait.
func AnnounceOn(nc *nats.Conn, news, owner string, r broker.Record) error {
	return tellOn(nc, news, owner, "pending", r, 0)
}

// listen calls fn for every disable another writer announces, and hands
// the keys of the writes others tell of to h, until the returned stop.
// nats.go calls fn from the subscription's goroutine.
func (s *Store) listen(fn func(broker.Event), h *hints) (stop func(), err error) {
	if s.cfg.News == "" {
		return func() {}, nil
	}
	sub, err := s.js.Conn().Subscribe(s.cfg.News, func(m *nats.Msg) {
		if m.Header.Get(newsFrom) == s.owner {
			return
		}
		key := m.Header.Get(newsKey)
		op := m.Header.Get(newsOp)
		if op == "put" || op == "del" {
			// Told after a write: it names the write's revision, which is
			// not taken, but news without one is not news.
			if rev, err := strconv.ParseUint(m.Header.Get(newsRevision), 10, 64); err != nil || rev == 0 {
				return
			}
		}
		switch {
		case op == "ask":
			s.answer()
		case !keyRE.MatchString(key) || len(m.Data) > maxNews:
		case op == "put" || op == "del":
			h.add(key) // a write is read from the bucket, never taken from the message
		case op == "pending" && len(m.Data) > 0:
			if r, err := Decode(key, m.Data); err == nil {
				fn(broker.Event{Router: key, Entry: &broker.Entry{Record: r}, Provisional: true})
			}
		}
	})
	if err != nil {
		return nil, err
	}
	return func() { _ = sub.Unsubscribe() }, nil
}

// maxHints bounds the keys waiting to be read after news of them: a
// flood of forged news costs one read per key at most, and what does not
// fit is left to the watcher.
const maxHints = 1024

// hints are the keys news told of a write to, waiting to be read.
type hints struct {
	mu    sync.Mutex
	keys  map[string]bool
	ready chan struct{}
}

func newHints() *hints { return &hints{keys: map[string]bool{}, ready: make(chan struct{}, 1)} }

func (h *hints) add(key string) {
	h.mu.Lock()
	if len(h.keys) < maxHints {
		h.keys[key] = true
	}
	h.mu.Unlock()
	select {
	case h.ready <- struct{}{}:
	default:
	}
}

func (h *hints) take() map[string]bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	keys := h.keys
	h.keys = map[string]bool{}
	return keys
}

// readHints reads each key the news told of from the bucket and delivers
// the bucket's word to fn, until ctx ends. A read that fails is dropped:
// the watcher brings the change.
func (s *Store) readHints(ctx context.Context, h *hints, fn func(broker.Event)) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-h.ready:
		}
		for key := range h.take() {
			rctx, cancel := context.WithTimeout(ctx, time.Second)
			e, live, err := s.Latest(rctx, key)
			cancel()
			if err != nil || e.Revision == 0 {
				continue
			}
			s.settled(key, e.Created)
			fn(broker.Word(key, e, live))
		}
	}
}
