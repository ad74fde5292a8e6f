package gecholog

import (
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/gecholog/broker/broker"
)

// Handler answers gecholog's processor messages with a broker's
// decisions. gecholog calls the broker twice per client call on one
// subject: in the request context with {"gl_path": "/azure/"}, answered
// with the chosen router, and in the response context with the router used
// and the status the client got, answered empty. Its methods are safe for
// concurrent use.
type Handler struct {
	b         *broker.Broker
	replies   atomic.Pointer[[][]byte] // the answer for each router, by id
	log       *slog.Logger
	malformed atomic.Uint64
	warn      sometimes
	// session is gecholog's session header (its session_id_header).
	session  string
	problems keyProblems
}

// HandlerOption sets how a Handler reads gecholog's messages.
type HandlerOption func(*Handler)

// SessionHeader names gecholog's session header, session_id_header in
// its gl_config.json (DefaultSessionHeader when not given), which pools
// with "affinity": "session" key their calls by.
func SessionHeader(name string) HandlerOption {
	return func(h *Handler) {
		if name != "" {
			h.session = name
		}
	}
}

// NewHandler returns a handler answering with b's choices. log receives
// warnings about malformed messages; nil discards them.
func NewHandler(b *broker.Broker, log *slog.Logger, opts ...HandlerOption) *Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &Handler{b: b, log: log, warn: sometimes{every: 10 * time.Second}, session: DefaultSessionHeader}
	for _, o := range opts {
		o(h)
	}
	h.learn()
	return h
}

// learn makes the answers for every router b has had: a reconfigured
// broker gives routers it adds the next ids.
func (h *Handler) learn() [][]byte {
	var replies [][]byte
	for _, r := range h.b.Members() {
		replies = append(replies, Reply(r))
	}
	h.replies.Store(&replies)
	return replies
}

// Handle answers one processor message. A request context naming an ingress
// gets {"gl_path": chosen router}; everything else gets an empty answer
// (nil), which gecholog reads as "no change". A response context changes
// the router's health; any write to the store happens after Handle returns.
// A malformed message is answered empty and counted, with one warning line
// at most every 10 s.
func (h *Handler) Handle(data []byte) []byte {
	k := keyScan{h: h}
	m, err := parse(data, &k)
	if err != nil {
		h.malformed.Add(1)
		h.warn.do(func(suppressed int) {
			h.log.Warn("ignoring malformed processor message",
				slog.Any("error", err), slog.Int("suppressed_since_last", suppressed))
		})
		return nil
	}
	if !m.HasStatus {
		key, problem := k.key(&m)
		if problem != KeyOK {
			h.problems[problem].Add(1)
		}
		if id := h.b.ChooseIn(k.in, m.Path, key); id >= 0 {
			replies := *h.replies.Load()
			if id >= len(replies) {
				replies = h.learn() // a router the broker added since
			}
			return replies[id]
		}
		return nil
	}
	var retryAfter time.Duration
	if m.Status == 429 || m.Status == 503 {
		now := time.Now()
		retryAfter = RetryAfter(m.Headers, now)
		if m.Status == 429 {
			retryAfter = quotaBack(m.Headers, now, retryAfter)
		}
	}
	h.b.Report(m.Path, m.Status, retryAfter)
	return nil
}

// keyHeader is the header the calls to a pool with affinity a are keyed
// by.
func (h *Handler) keyHeader(a broker.Affinity) string {
	if a.Session {
		return h.session
	}
	return a.Header
}

// keyScan is the handler's part in Parse's one pass over a message: when
// gl_path comes before ingress_headers, as gecholog sends them (in the
// order of their names), the pool's affinity is known by then, and its
// header is looked for on the way through ingress_headers, rather than in
// a second pass after.
type keyScan struct {
	h    *Handler
	in   broker.PoolRef // the pool gl_path names
	find headerFind     // its header in ingress_headers
	// valid: in and find are those of the message's last gl_path and
	// last ingress_headers.
	valid bool
}

// scan reads ingress_headers at s.i into m, and finds the header of the
// pool of the gl_path read so far on the way.
func (k *keyScan) scan(s *scanner, m *Message) error {
	k.valid = false
	if !m.HasPath {
		_, err := s.rawHeaders(1, &m.IngressHeaders, nil)
		return err
	}
	k.in = k.h.b.PoolRef(m.Path)
	k.find = headerFind{}
	if a := k.in.Affinity(); a.On() {
		k.find.name = k.h.keyHeader(a)
	}
	fast, err := s.rawHeaders(1, &m.IngressHeaders, &k.find)
	k.valid = fast
	return err
}

// key is the session key of request context m, which parse read with k:
// SessionKey of its ingress_headers for its pool's header, nil for a
// pool without affinity.
func (k *keyScan) key(m *Message) ([]byte, KeyProblem) {
	if !k.valid { // not read on the way: gl_path came after ingress_headers, or they were not gecholog's
		k.in = k.h.b.PoolRef(m.Path)
	}
	a := k.in.Affinity()
	if !a.On() {
		return nil, KeyOK
	}
	if !k.valid {
		k.find.value, k.find.problem = headerValue(m.IngressHeaders, k.h.keyHeader(a))
	}
	return keyOf(k.find.value, k.find.problem, a.Session)
}

// Malformed returns how many messages could not be read.
func (h *Handler) Malformed() uint64 { return h.malformed.Load() }

// KeyProblems returns how many calls to pools with affinity had a header
// that gave no key, by problem (index KeyEmpty, KeyLong, KeyMalformed;
// KeyOK is 0). The broker counts them, with the calls without the header,
// as calls without a key (broker.SessionCounts.NoKey).
func (h *Handler) KeyProblems() [4]uint64 {
	var out [4]uint64
	for i := range out {
		out[i] = h.problems[i].Load()
	}
	return out
}

// sometimes runs a function at most once per interval and counts the calls
// it skipped, so that a flood of bad input yields one log line, not a flood.
type sometimes struct {
	every   time.Duration
	last    atomic.Int64 // unix nanoseconds of the last run
	skipped atomic.Int64
}

func (s *sometimes) do(f func(skipped int)) {
	now := time.Now().UnixNano()
	last := s.last.Load()
	if now-last < int64(s.every) || !s.last.CompareAndSwap(last, now) {
		s.skipped.Add(1)
		return
	}
	f(int(s.skipped.Swap(0)))
}
