package kv

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/broker"
)

// Mode says how disables expire.
type Mode int

const (
	// ModeTTL: the server expires each key by its per-message TTL and
	// watchers see a purge (nats-server 2.11 and later).
	ModeTTL Mode = iota + 1
	// ModeExpiry: the server cannot expire keys; readers enforce Until and
	// a janitor deletes expired keys.
	ModeExpiry
)

func (m Mode) String() string {
	switch m {
	case ModeTTL:
		return "ttl"
	case ModeExpiry:
		return "expiry"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Errors callers test for with errors.Is.
var (
	// ErrNoJetStream means the server or the account has no JetStream.
	ErrNoJetStream = errors.New("jetstream is not enabled on the NATS server")
	// ErrNoBucket means the bucket does not exist and Config.NoCreate is set.
	ErrNoBucket = errors.New("bucket does not exist")
	// ErrExists means Create found a live key.
	ErrExists = errors.New("key exists")
	// ErrNotFound means the router has no live key.
	ErrNotFound = errors.New("key not found")
	// ErrConflict means the key changed since the revision given; it is
	// broker.ErrConflict, which the broker's writes test for.
	ErrConflict = broker.ErrConflict
)

// markerTTL is how long a bucket in ModeTTL keeps the purge marker of an
// expired key. Readers enforce Until themselves, so a watcher that misses a
// marker while disconnected still re-enables the router; the marker only
// needs to outlive ordinary reconnects.
const markerTTL = time.Hour

// janitorGrace is how long replicas other than the writer wait past a
// record's Until before deleting it in ModeExpiry, so that usually the writer
// alone deletes, and someone does when the writer is gone.
const janitorGrace = 5 * time.Second

// Config says which bucket to use and who is writing.
type Config struct {
	// Bucket is the bucket's name; it is created when missing.
	Bucket string
	// Description is the description a new bucket gets, for `nats kv info`.
	Description string
	// News is the plain NATS subject every write is told on at once, and
	// watchers listen to (see Store.Announce); none when empty.
	News string
	// Replicas is the bucket's replica count when it is created (default 1).
	Replicas int
	// Owner names this replica; the janitor deletes its own expired records first.
	Owner string
	// Logger receives warnings about unreadable records; nil discards them.
	Logger *slog.Logger
	// NoCreate makes Open fail with ErrNoBucket instead of creating a
	// missing bucket, for tools that only look.
	NoCreate bool
	// Linger is how long an automatic record's key outlives its Until and
	// its probe claim: the time a router on probation has to be probed
	// before the key expires and the router is simply enabled.
	Linger time.Duration
	// Waiting, when set, is called once if Open's first question goes
	// unanswered for a second while Open asks again (a cluster electing
	// the bucket's leader): a tool says then what it waits for.
	Waiting func()
}

// Store reads and writes router health records; it implements
// broker.Store. Its methods are safe for concurrent use.
type Store struct {
	js     jetstream.JetStream
	kv     jetstream.KeyValue
	stream jetstream.Stream
	mode   Mode
	owner  string
	linger time.Duration
	log    *slog.Logger
	cfg    Config // to create the bucket again if someone deletes it

	mu      sync.Mutex
	janitor map[string]*time.Timer   // ModeExpiry: pending deletes by key
	pending map[string]broker.Record // announced and not yet written, by key
	closed  bool
	sweeps  sync.WaitGroup     // janitor deletes armed or running; added to under mu while not closed
	stop    context.Context    // ends janitor deletes in flight when the store closes
	cancel  context.CancelFunc // ends stop

	resync chan struct{} // asks Watch to start a new watcher at once
	reach  reach         // whether the bucket answered its last check

	// Used by the watch goroutine only.
	delivered     uint64      // the highest revision delivered
	staleAt       uint64      // the last sequence a re-watch was last made for
	created       time.Time   // when the stream the view came from was made
	seen          streamState // the stream's state at the last check
	verified      streamState // the stream's state at the last verify
	verifiedClean bool        // the last verify found every router settled
	verifiedAt    time.Time   // when the last verify ran
}

// Open attaches to the bucket named in cfg, creating it when it does not
// exist. An existing bucket is never changed: its configuration decides the
// mode. A new bucket gets limit markers when the server supports per-message
// TTL (JetStream API level 1 or more).
func Open(ctx context.Context, js jetstream.JetStream, cfg Config) (*Store, error) {
	if cfg.Replicas == 0 {
		cfg.Replicas = 1
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// A stream without a leader (a cluster electing one, a bucket just
	// created) leaves a question unanswered, and one asked again after the
	// election is answered at once: ask each second rather than wait out
	// ctx once.
	waiting := sync.OnceFunc(func() {
		if cfg.Waiting != nil {
			cfg.Waiting()
		}
	})
	b, err := eachSecond(ctx, waiting, func(ctx context.Context) (jetstream.KeyValue, error) { return js.KeyValue(ctx, cfg.Bucket) })
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		if cfg.NoCreate {
			return nil, fmt.Errorf("open bucket %q: %w", cfg.Bucket, ErrNoBucket)
		}
		b, err = create(ctx, js, cfg)
	}
	if err != nil {
		return nil, noJetStream(fmt.Errorf("open bucket %q: %w", cfg.Bucket, err))
	}
	st, err := eachSecond(ctx, waiting, b.Status)
	if err != nil {
		return nil, noJetStream(fmt.Errorf("read bucket %q status: %w", cfg.Bucket, err))
	}
	mode := ModeExpiry
	if st.LimitMarkerTTL() > 0 {
		mode = ModeTTL
	}
	stream, err := eachSecond(ctx, waiting, func(ctx context.Context) (jetstream.Stream, error) { return js.Stream(ctx, "KV_"+cfg.Bucket) })
	if err != nil {
		return nil, fmt.Errorf("open bucket %q stream: %w", cfg.Bucket, err)
	}
	stop, cancel := context.WithCancel(context.Background())
	return &Store{js: js, kv: b, stream: stream, mode: mode, owner: cfg.Owner, linger: cfg.Linger, log: log, cfg: cfg,
		janitor: map[string]*time.Timer{}, pending: map[string]broker.Record{}, stop: stop, cancel: cancel, resync: make(chan struct{}, 1),
		created: stream.CachedInfo().Created}, nil
}

func create(ctx context.Context, js jetstream.JetStream, cfg Config) (jetstream.KeyValue, error) {
	info, err := js.AccountInfo(ctx)
	if err != nil {
		return nil, err
	}
	kc := jetstream.KeyValueConfig{
		Bucket:      cfg.Bucket,
		Description: cfg.Description,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
	}
	if info.API.Level >= 1 {
		kc.LimitMarkerTTL = markerTTL
	}
	b, err := js.CreateKeyValue(ctx, kc)
	if errors.Is(err, jetstream.ErrBucketExists) {
		// Another replica created it first, perhaps with other settings.
		return js.KeyValue(ctx, cfg.Bucket)
	}
	return b, err
}

func noJetStream(err error) error {
	if errors.Is(err, jetstream.ErrJetStreamNotEnabled) ||
		errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) ||
		errors.Is(err, nats.ErrNoResponders) {
		return fmt.Errorf("%w: %w", ErrNoJetStream, err)
	}
	return err
}

// Mode reports how this bucket's disables expire.
func (s *Store) Mode() Mode { return s.mode }

// Bucket returns the bucket's name.
func (s *Store) Bucket() string { return s.kv.Bucket() }

// Get returns the live record of router, or ErrNotFound.
func (s *Store) Get(ctx context.Context, router string) (broker.Entry, error) {
	if !ValidKey(router) {
		return broker.Entry{}, fmt.Errorf("get %q: %w", router, jetstream.ErrInvalidKey)
	}
	m, err := s.last(ctx, router)
	if errors.Is(err, jetstream.ErrMsgNotFound) || err == nil && removal(m.Header) {
		return broker.Entry{}, fmt.Errorf("get %q: %w", router, ErrNotFound)
	}
	if err != nil {
		return broker.Entry{}, fmt.Errorf("get %q: %w", router, err)
	}
	r, err := Decode(router, m.Data)
	if err != nil {
		return broker.Entry{}, err
	}
	return broker.Entry{Record: r, Revision: m.Sequence, Created: m.Time}, nil
}

// last reads key's last message, whichever member of the stream answers
// (see hedgeAfter), or gives jetstream.ErrMsgNotFound.
func (s *Store) last(ctx context.Context, key string) (*jetstream.RawStreamMsg, error) {
	m, err := lastMsg(ctx, s.js.Conn(), "KV_"+s.kv.Bucket(), s.subject(key))
	if errors.Is(err, nats.ErrNoResponders) { // a stream made without direct gets
		return s.stream.GetLastMsgForSubject(ctx, s.subject(key))
	}
	return m, err
}

// Create writes r under its router's key if the key is absent, deleted or
// expired, and returns the new revision. A live key gives ErrExists.
func (s *Store) Create(ctx context.Context, r broker.Record) (uint64, error) {
	val, err := Encode(r)
	if err != nil {
		return 0, err
	}
	var opts []jetstream.KVCreateOpt
	if ttl := s.ttl(r); ttl > 0 {
		opts = append(opts, jetstream.KeyTTL(ttl))
	}
	rev, err := s.kv.Create(ctx, r.Router, val, opts...)
	if errors.Is(err, jetstream.ErrKeyExists) {
		return 0, fmt.Errorf("create %q: %w", r.Router, ErrExists)
	}
	if err != nil {
		return 0, fmt.Errorf("create %q: %w", r.Router, err)
	}
	return rev, nil
}

// Update writes r as its router's live record if the key's last message,
// live or a delete marker, is still at revision rev (0: the key has never
// had a message), with the TTL the mode calls for, and returns the new
// revision. Otherwise it gives ErrConflict.
func (s *Store) Update(ctx context.Context, r broker.Record, rev uint64) (uint64, error) {
	val, err := Encode(r)
	if err != nil {
		return 0, err
	}
	var opts []jetstream.PublishOpt
	if ttl := s.ttl(r); ttl > 0 {
		opts = append(opts, jetstream.WithMsgTTL(ttl))
	}
	// KeyValue.Update takes no TTL, so publish to the key's subject with the
	// same compare-and-set header Update uses, plus the TTL header.
	seq, err := s.publish(ctx, &nats.Msg{Subject: s.subject(r.Router), Data: val}, rev, opts...)
	if err == nil {
		s.tell("put", r, seq)
	}
	return seq, err
}

// Release deletes the router's key if its last message is still at
// revision rev, leaving memo in the delete marker: `nats kv ls` no longer
// lists the router, and Latest and watchers still read the memo.
func (s *Store) Release(ctx context.Context, memo broker.Record, rev uint64) (uint64, error) {
	val, err := Encode(memo)
	if err != nil {
		return 0, err
	}
	m := &nats.Msg{Subject: s.subject(memo.Router), Data: val, Header: nats.Header{}}
	m.Header.Set(kvOperation, "DEL") // what KeyValue.Delete writes
	seq, err := s.publish(ctx, m, rev)
	if err == nil {
		s.tell("del", memo, seq)
	}
	return seq, err
}

// kvOperation is the header nats.go's KV marks deletes and purges with.
const kvOperation = "KV-Operation"

// removal says whether a message with header h removes its key rather
// than holds a value: a delete, a purge, or the server's marker of an
// expiry.
func removal(h nats.Header) bool {
	return h.Get(kvOperation) != "" || h.Get(jetstream.MarkerReasonHeader) != ""
}

func (s *Store) publish(ctx context.Context, m *nats.Msg, rev uint64, opts ...jetstream.PublishOpt) (uint64, error) {
	opts = append(opts, jetstream.WithExpectLastSequencePerSubject(rev))
	key := m.Subject[len(s.subject("")):]
	ack, err := s.js.PublishMsg(ctx, m, opts...)
	if err != nil {
		if wrongLastSequence(err) {
			return 0, fmt.Errorf("write %q at revision %d: %w", key, rev, ErrConflict)
		}
		return 0, fmt.Errorf("write %q: %w", key, s.failed(err))
	}
	return ack.Sequence, nil
}

// Latest returns the last message on router's key with its revision, for
// a compare-and-set that follows. live says whether it is a live record;
// otherwise the entry holds the memo of the last delete marker (zero when
// it has none) or, with Revision 0, the key has never had a message. A
// live record that cannot be read is reported as not live, as watchers
// treat it, so that a write can replace it.
func (s *Store) Latest(ctx context.Context, router string) (e broker.Entry, live bool, err error) {
	m, err := s.last(ctx, router)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return broker.Entry{}, false, nil
	}
	if err != nil {
		return broker.Entry{}, false, fmt.Errorf("read %q: %w", router, s.failed(err))
	}
	e.Revision, e.Created = m.Sequence, m.Time
	live = !removal(m.Header)
	if len(m.Data) == 0 {
		return e, false, nil
	}
	r, err := Decode(router, m.Data)
	if err != nil {
		return e, false, nil
	}
	e.Record = r
	return e, live, nil
}

func (s *Store) subject(key string) string { return "$KV." + s.kv.Bucket() + "." + key }

// Delete removes router's key if it is still at revision rev (0: whatever
// it holds), as `nats kv del` does: an empty delete marker, which also
// forgets the backoff level. It returns the delete marker's revision.
func (s *Store) Delete(ctx context.Context, router string, rev uint64) (uint64, error) {
	m := &nats.Msg{Subject: s.subject(router), Header: nats.Header{}}
	m.Header.Set(kvOperation, "DEL")
	var opts []jetstream.PublishOpt
	if rev > 0 {
		opts = append(opts, jetstream.WithExpectLastSequencePerSubject(rev))
	}
	ack, err := s.js.PublishMsg(ctx, m, opts...)
	if wrongLastSequence(err) {
		return 0, fmt.Errorf("delete %q at revision %d: %w", router, rev, ErrConflict)
	}
	if err != nil {
		return 0, fmt.Errorf("delete %q: %w", router, err)
	}
	s.tell("del", broker.Record{Router: router}, ack.Sequence)
	return ack.Sequence, nil
}

// List returns every live record.
func (s *Store) List(ctx context.Context) ([]broker.Entry, error) {
	// The lister's watcher lives until its context ends (nats.go waits
	// for it in a goroutine of its own): end it when the listing is done.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	keys, err := s.kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("list bucket %q: %w", s.kv.Bucket(), err)
	}
	var out []broker.Entry
	for k := range keys.Keys() {
		if !ValidKey(k) {
			continue // not a router: see ErrInvalidKey
		}
		e, err := s.Get(ctx, k)
		if errors.Is(err, ErrNotFound) {
			continue // expired or deleted since the listing
		}
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

// keepUntil is when r's key may go: a manual record at its Until (zero:
// never), an automatic one Linger after its Until and its probe claim.
func (s *Store) keepUntil(r broker.Record) time.Time {
	if r.Manual || r.Until.IsZero() {
		return r.Until
	}
	end := r.Until
	if r.Probe != nil && r.Probe.Until.After(end) {
		end = r.Probe.Until
	}
	return end.Add(s.linger)
}

// ttl is the key's time to live for r in ModeTTL, 0 for none. The server
// truncates TTLs to whole seconds, so round up: the key then outlives its
// time by less than a second, and readers go by the record's times.
func (s *Store) ttl(r broker.Record) time.Duration {
	keep := s.keepUntil(r)
	if s.mode != ModeTTL || keep.IsZero() {
		return 0
	}
	d := time.Until(keep)
	if d < time.Second {
		return time.Second
	}
	return (d + time.Second - 1).Truncate(time.Second)
}

func wrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) &&
		(apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// sweep schedules the deletion of e's key after its Until in ModeExpiry, or
// cancels a scheduled one when e is nil.
func (s *Store) sweep(key string, e *broker.Entry) {
	if s.mode != ModeExpiry {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unsweep(key)
	keep := time.Time{}
	if e != nil {
		keep = s.keepUntil(e.Record)
	}
	if keep.IsZero() || s.closed {
		return
	}
	wait := time.Until(keep)
	if e.Record.By != s.owner {
		wait += janitorGrace + rand.N(time.Second)
	}
	rev := e.Revision
	memo := broker.Record{Router: key, Level: e.Record.Level, Ended: keep, Reason: broker.ReasonExpired, At: keep, By: s.owner}
	s.sweeps.Add(1)
	s.janitor[key] = time.AfterFunc(wait, func() {
		defer s.sweeps.Done()
		ctx, cancel := context.WithTimeout(s.stop, 5*time.Second)
		defer cancel()
		// Compare-and-set: only the first replica's delete lands, and a
		// record rewritten meanwhile is left alone. The memo keeps the
		// backoff level, as a TTL expiry cannot.
		_, err := s.Release(ctx, memo, rev)
		if err != nil && !errors.Is(err, ErrConflict) && s.stop.Err() == nil {
			s.log.Warn("could not delete expired router record; it no longer disables the router, but `nats kv ls` still lists it",
				slog.String("router", key), slog.Any("error", err))
		}
	})
}

// unsweep cancels key's scheduled delete. A delete already under way
// finishes, or ends with the store. s.mu must be held.
func (s *Store) unsweep(key string) {
	if t := s.janitor[key]; t != nil {
		if t.Stop() {
			s.sweeps.Done()
		}
		delete(s.janitor, key)
	}
}

// Close stops the janitor: scheduled deletes are cancelled, and one under
// way is abandoned. It returns when none runs. Watchers are stopped by the
// function Watch returned.
func (s *Store) Close() {
	s.mu.Lock()
	s.closed = true
	for k := range s.janitor {
		s.unsweep(k)
	}
	s.mu.Unlock()
	s.cancel()
	s.sweeps.Wait()
}
