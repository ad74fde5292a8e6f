package kv

import (
	"context"
	"log/slog"
	"strconv"
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
// What is told after a write landed carries its revision and is the
// bucket's word, exactly as the watcher will deliver it later. What is
// announced before is provisional: a replica only avoids the router on its
// word (see broker.Event). A plain subscription to the bucket's own
// subjects would not do, as it also delivers writes the stream refused.

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
	m := &nats.Msg{Subject: s.cfg.News, Header: nats.Header{}}
	m.Header.Set(newsKey, r.Router)
	m.Header.Set(newsOp, op)
	m.Header.Set(newsFrom, s.owner)
	if rev > 0 {
		m.Header.Set(newsRevision, strconv.FormatUint(rev, 10))
		m.Header.Set(newsCreated, time.Now().UTC().Format(time.RFC3339Nano))
	}
	var err error
	if m.Data, err = Encode(r); err != nil {
		return
	}
	if err := s.js.Conn().PublishMsg(m); err != nil {
		s.log.Debug("could not tell the news", slog.String("router", r.Router), slog.Any("error", err))
	}
}

// listen calls fn for every piece of news another writer tells, until the
// returned stop. nats.go calls fn from the subscription's goroutine.
func (s *Store) listen(fn func(broker.Event)) (stop func(), err error) {
	if s.cfg.News == "" {
		return func() {}, nil
	}
	sub, err := s.js.Conn().Subscribe(s.cfg.News, func(m *nats.Msg) {
		if m.Header.Get(newsOp) == "ask" && m.Header.Get(newsFrom) != s.owner {
			s.answer()
			return
		}
		if ev, ok := s.news(m); ok {
			if !ev.Provisional {
				s.settled(ev.Router, ev.Created)
			}
			fn(ev)
		}
	})
	if err != nil {
		return nil, err
	}
	return func() { _ = sub.Unsubscribe() }, nil
}

// news reads a news message; ok is false for this store's own news and for
// anything that is not news.
func (s *Store) news(m *nats.Msg) (ev broker.Event, ok bool) {
	key := m.Header.Get(newsKey)
	if m.Header.Get(newsFrom) == s.owner || !keyRE.MatchString(key) || len(m.Data) > maxNews {
		return ev, false
	}
	ev.Router = key
	var rec *broker.Record
	if len(m.Data) > 0 {
		r, err := Decode(key, m.Data)
		if err != nil {
			return ev, false
		}
		rec = &r
	}
	op := m.Header.Get(newsOp)
	if op == "pending" {
		if rec == nil {
			return ev, false
		}
		ev.Entry, ev.Provisional = &broker.Entry{Record: *rec}, true
		return ev, true
	}
	rev, err := strconv.ParseUint(m.Header.Get(newsRevision), 10, 64)
	if err != nil || rev == 0 {
		return ev, false
	}
	created, _ := time.Parse(time.RFC3339Nano, m.Header.Get(newsCreated))
	ev.Revision, ev.Created = rev, created
	switch {
	case op == "put" && rec != nil:
		ev.Entry = &broker.Entry{Record: *rec, Revision: rev, Created: created}
	case op == "del":
		ev.Memo = rec
	default:
		return ev, false
	}
	return ev, true
}
