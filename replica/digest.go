package replica

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/safetext"
)

// Every replica needs what gecholog's log says of each call (its latency,
// headroom, tokens and session), but read whole by every replica the log
// cost each one about 75 µs a transaction of 8 KB: a fleet of 20 spent 14
// to 20 times what one replica does to learn the same. So the replicas
// read the log in a queue group, each transaction reaching one of them,
// and the one that read it tells the others its digest on the stats
// subject: the few values the broker takes from it, about a hundred bytes,
// gathered for at most digestEvery, in a binary encoding (digestHeader).
// Every replica applies a digest as it applies a transaction it read
// itself (take), so each still counts every call of the fleet.
//
// Trust: whoever may publish on the stats subject may forge a digest, as
// whoever may publish on the log may forge a transaction; a digest's
// values are bounded as a transaction's are (the same take), and one that
// cannot be read whole is dropped and logged.
//
// A replica from before digests reads the whole log itself, outside the
// queue group, and drops a digest unread (it is not a JSON word): in a
// mixed fleet each replica still counts each call once.

const (
	// digestHeader marks a digest on the stats subject, and says its
	// encoding's version (digestVersion); `nats sub` shows it.
	digestHeader  = "Broker-Digest"
	digestVersion = "1"
	// digestEvery is how long a replica gathers digests before it tells
	// them: the others see a call's latency and headroom at most this
	// much later than the replica that read it.
	digestEvery = 4 * time.Millisecond
	// maxDigests bounds the digests in one message: a replica with more
	// to tell sends another.
	maxDigests = 1024
	// maxDigestPath bounds an ingress or router path in a digest.
	maxDigestPath = 4096
	// logQueue is the queue group in which the replicas read the log.
	logQueue = "broker-log"
)

// heard is what the broker takes from one transaction: its digest.
type heard struct {
	ingress, router []byte
	latency         time.Duration // the upstream's time to count; 0: none
	limits          *broker.RateLimits
	usage           broker.Usage
	session         uint64    // broker.SessionHash of its key, when keyed
	keyed           bool      //
	began           time.Time // when the call began, by gecholog's clock (zero: not said)
}

// take takes h into the broker: the router's latency and rate limits,
// the tokens used, and where its session went. It returns the values
// ignored as out of bounds.
func (r *Replica) take(h *heard) []error {
	var ignored []error
	if err := r.broker.Finished(h.router, h.latency, h.limits); err != nil {
		ignored = append(ignored, err)
	}
	if err := r.broker.UsedIn(h.ingress, h.router, h.usage); err != nil {
		ignored = append(ignored, err)
	}
	// Where the call's session went, its first call included: the next
	// keyed call of the session goes there (pools with "session" affinity).
	if h.keyed {
		r.broker.RememberHash(h.session, h.router, h.began)
	}
	return ignored
}

// digests are the digests a replica has read and not yet told.
type digests struct {
	mu      sync.Mutex
	pending []byte        // the encoded digests, one after the other
	n       int           // digests in pending
	kick    chan struct{} // one: the first digest waits
	from    []byte        // what its messages begin with: its ID, encoded
}

// init readies d for the replica named id, before it hears the stats
// subject.
func (d *digests) init(id string) {
	d.kick = make(chan struct{}, 1)
	d.from = append(binary.AppendUvarint(nil, uint64(len(id))), id...)
}

// share queues h to be told to the other replicas within digestEvery,
// or at once when maxDigests wait.
func (r *Replica) share(h *heard) {
	d := &r.digests
	d.mu.Lock()
	d.pending = appendHeard(d.pending, h)
	d.n++
	full, first := d.n >= maxDigests, d.n == 1
	d.mu.Unlock()
	switch {
	case full:
		r.tellDigests()
	case first:
		select {
		case d.kick <- struct{}{}:
		default:
		}
	}
}

// tellDigests tells the digests waiting, if any, in one message.
func (r *Replica) tellDigests() {
	d := &r.digests
	d.mu.Lock()
	if d.n == 0 {
		d.mu.Unlock()
		return
	}
	msg := binary.AppendUvarint(append([]byte(nil), d.from...), uint64(d.n))
	msg = append(msg, d.pending...)
	d.pending, d.n = d.pending[:0], 0
	d.mu.Unlock()
	m := &nats.Msg{Subject: StatsSubject(r.cfg.Bucket), Header: nats.Header{digestHeader: []string{digestVersion}}, Data: msg}
	if err := r.nc.PublishMsg(m); err != nil {
		r.tx.unshared.Add(1)
		r.log.Debug("could not tell the transactions' digests", slog.Any("error", err))
	}
}

// gather runs tell once kick says something waits, at most every
// every, until stop is closed: what was gathered meanwhile goes in one
// message (the digests read, the words the relay heard).
func gather(stop, kick <-chan struct{}, every time.Duration, tell func()) {
	wait := time.NewTimer(0)
	defer wait.Stop()
	for {
		select {
		case <-stop:
			return
		case <-kick:
		}
		select {
		case <-stop:
			return
		case <-wait.C:
		}
		tell()
		wait.Reset(every)
	}
}

// hearDigests takes the digests another replica told.
func (r *Replica) hearDigests(m *nats.Msg) {
	t := &r.tx
	if !t.calls.enter() {
		return
	}
	defer t.calls.leave()
	if v := m.Header.Get(digestHeader); v != digestVersion {
		t.tellBadDigest(r.log, m.Subject, fmt.Errorf("a version this replica cannot read (%q; it reads %q): a newer broker told it, so upgrade this one", safetext.Clip(v, 16), digestVersion))
		return
	}
	if bytes.HasPrefix(m.Data, r.digests.from) {
		return // its own, taken as it read them: not read again
	}
	from, hs, err := readDigests(m.Data, t.scratch[:0])
	t.scratch = hs[:0]
	if err != nil {
		t.tellBadDigest(r.log, m.Subject, err)
		return
	}
	if from == r.cfg.ID {
		return // its own name on a message it did not tell
	}
	for i := range hs {
		if ignored := r.take(&hs[i]); len(ignored) > 0 {
			t.ignored.Add(1)
			t.tellIgnored(r.log, m.Subject, string(hs[i].router), errors.Join(ignored...))
		}
		t.shared.Add(1)
	}
}

// tellBadDigest logs a digest that could not be read, at most once every
// txTellEvery with a count of the others.
func (t *txLog) tellBadDigest(log *slog.Logger, subject string, err error) {
	n := t.badDigests.Add(1)
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Now()
	if !t.badDigestAt.IsZero() && now.Sub(t.badDigestAt) < txTellEvery {
		return
	}
	log.Warn("ignoring a message of transactions' digests that cannot be read", slog.String("subject", subject),
		slog.String("error", safetext.Line(err.Error())), slog.Uint64("ignored_since_last", n-t.badDigestTold-1),
		slog.String("hint", "replicas tell each other there what they read of gecholog's log; anything else is forged or from a broken client"))
	t.badDigestAt, t.badDigestTold = now, n
}

// appendHeard appends h's encoding to b: a byte of flags (limits,
// keyed), the usage's state, the ingress and the router (each a length
// and its bytes), the latency in nanoseconds, then the tokens when the
// usage is known, the rate limits when said, the session's hash when
// keyed, with when the call began. Numbers are varints; times are unix
// nanoseconds, 0 for none.
func appendHeard(b []byte, h *heard) []byte {
	var flags byte
	if h.limits != nil {
		flags |= flagLimits
	}
	if h.keyed {
		flags |= flagKeyed
	}
	b = append(b, flags, byte(h.usage.State))
	b = binary.AppendUvarint(b, uint64(len(h.ingress)))
	b = append(b, h.ingress...)
	b = binary.AppendUvarint(b, uint64(len(h.router)))
	b = append(b, h.router...)
	b = binary.AppendVarint(b, int64(h.latency))
	if h.usage.State == broker.UsageKnown {
		b = binary.AppendVarint(b, h.usage.Input)
		b = binary.AppendVarint(b, h.usage.Output)
		b = binary.AppendVarint(b, h.usage.CachedInput)
	}
	if l := h.limits; l != nil {
		for _, v := range [...]int64{l.RemainingRequests, l.LimitRequests, l.RemainingTokens, l.LimitTokens,
			nanos(l.ResetRequests), nanos(l.ResetTokens), nanos(l.Sent), nanos(l.Answered)} {
			b = binary.AppendVarint(b, v)
		}
	}
	if h.keyed {
		b = binary.LittleEndian.AppendUint64(b, h.session)
		b = binary.AppendVarint(b, nanos(h.began))
	}
	return b
}

const (
	flagLimits = 1 << iota
	flagKeyed
)

func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func unnanos(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// readDigests reads a message of digests into hs: the teller's ID, then
// their count, then each (appendHeard). The paths point into data. The
// whole message is read or none of it: a count over maxDigests, a path
// over maxDigestPath, a usage state or flag unknown, a count of tokens or
// requests below -1 or over broker.MaxTokens, or a byte too many or too
// few, and err says which.
func readDigests(data []byte, hs []heard) (from string, _ []heard, err error) {
	d := decoder{b: data, what: "digests"}
	id := d.bytes(MaxID)
	n := d.uvarint()
	if d.err == nil && n > maxDigests {
		d.fail("%d digests, more than %d", n, maxDigests)
	}
	for i := uint64(0); i < n && d.err == nil; i++ {
		var h heard
		flags, state := d.readByte(), d.readByte()
		if flags&^(flagLimits|flagKeyed) != 0 || state > byte(broker.UsageUnreadable) {
			d.fail("digest %d: flags %#x or usage state %d unknown", i, flags, state)
		}
		h.usage.State = broker.UsageState(state)
		h.ingress, h.router = d.bytes(maxDigestPath), d.bytes(maxDigestPath)
		h.latency = time.Duration(d.varint())
		if h.usage.State == broker.UsageKnown {
			h.usage.Input, h.usage.Output, h.usage.CachedInput = d.count(), d.count(), d.count()
		}
		if flags&flagLimits != 0 {
			h.limits = &broker.RateLimits{RemainingRequests: d.count(), LimitRequests: d.count(), RemainingTokens: d.count(), LimitTokens: d.count(),
				ResetRequests: unnanos(d.varint()), ResetTokens: unnanos(d.varint()), Sent: unnanos(d.varint()), Answered: unnanos(d.varint())}
		}
		if flags&flagKeyed != 0 {
			h.session, h.keyed, h.began = d.readU64(), true, unnanos(d.varint())
		}
		hs = append(hs, h)
	}
	if d.err == nil && len(d.b) > 0 {
		d.fail("%d bytes after the last digest", len(d.b))
	}
	if d.err != nil {
		return "", hs[:0], d.err
	}
	return string(id), hs, nil
}

// decoder reads a binary encoding (digests, words); its first error stops
// it, and every read after returns zero.
type decoder struct {
	b    []byte
	what string // what it reads, for its errors
	err  error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf(d.what+": "+format, args...)
	}
}

func (d *decoder) readByte() byte {
	if d.err != nil || len(d.b) < 1 {
		d.fail("cut short")
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) uvarint() uint64 { return number(d, binary.Uvarint) }
func (d *decoder) varint() int64   { return number(d, binary.Varint) }

// number reads one varint with read (binary.Uvarint or binary.Varint).
func number[T int64 | uint64](d *decoder, read func([]byte) (T, int)) T {
	if d.err != nil {
		return 0
	}
	v, n := read(d.b)
	if n <= 0 {
		d.fail("a number cut short or too long")
		return 0
	}
	d.b = d.b[n:]
	return v
}

// count is a number of tokens or requests: -1 (not said) to
// broker.MaxTokens.
func (d *decoder) count() int64 {
	v := d.varint()
	if v < -1 || v > broker.MaxTokens {
		d.fail("a count of %d, out of bounds", v)
		return 0
	}
	return v
}

func (d *decoder) bytes(max int) []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(max) || n > uint64(len(d.b)) {
		d.fail("a text of %d bytes, more than %d or than is left", n, min(max, len(d.b)))
		return nil
	}
	s := d.b[:n:n]
	d.b = d.b[n:]
	return s
}

func (d *decoder) readU64() uint64 {
	if d.err != nil || len(d.b) < 8 {
		d.fail("cut short")
		return 0
	}
	v := binary.LittleEndian.Uint64(d.b)
	d.b = d.b[8:]
	return v
}
