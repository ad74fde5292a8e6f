package replica

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/safetext"
)

// While its counts change, a replica tells them every few milliseconds
// (wordEvery). Told as JSON to every replica, 20 replicas delivered 20,000
// words a second, each decoded by its reader, and a pool that reads the
// fleet's calls in flight (least-busy) lost a quarter of its throughput
// to them: half to the deliveries, half to the decoding. So:
//
//   - A word that says only counts is binary (countsHeader): the replica's
//     name, when it told by its clock, its heartbeat, and its counts per
//     router. The JSON message (StatsMessage) still goes to every replica
//     at once when anything else changes (a failure, the configuration, a
//     change taken from the bucket), on an ask, and at the heartbeat.
//   - In a fleet of more than relayFrom, a replica tells its word on the
//     relay subject, which only the relay hears: the replica whose name
//     comes first of those it hears (broker.Relay). The relay tells the
//     words it gathered within relayEvery in one message on the stats
//     subject: a tick costs 2N deliveries rather than N(N−1).
//
// A replica that does not hear its own word come back from the relay
// within echoWait tells its words straight to every replica for
// straightFor: a relay that stopped without a goodbye (until the others
// forget it), a forged name that comes before every real one, or a server
// whose permissions refuse the relay subject costs the fleet the N² words,
// not its agreement. A word may then reach a replica on two paths, so each
// says when it was told, and one overtaken is dropped (broker.MergeTold).
//
// Trust: a word is bounded as a JSON one is (the same broker.MergeTold),
// and a message that cannot be read whole is dropped and logged. A replica
// from before binary words drops them unread (they are not JSON): it
// hears another's counts at its heartbeat and its failures at once.

// RelaySubject is where the replicas of a large fleet tell their words to
// the relay.
func RelaySubject(bucket string) string { return "broker.relay." + bucket }

const (
	// countsHeader marks a message of words, and says its encoding's
	// version (countsVersion).
	countsHeader  = "Broker-Counts"
	countsVersion = "1"
	// relayFrom is the largest fleet whose replicas tell their words
	// straight to each other.
	relayFrom = heardEach + 1
	// relayEvery is how long the relay gathers words before it tells them.
	relayEvery = 10 * time.Millisecond
	// echoWait is how long a replica waits to hear its word back from the
	// relay; straightFor, how long it then tells its words straight.
	echoWait    = 100 * time.Millisecond
	straightFor = 5 * time.Second
	// refusedFor is how long it tells them straight once the server
	// refused the relay subject (its permissions may be reloaded).
	refusedFor = 10 * time.Minute
	// maxWords bounds the words in one message (the broker keeps 1024
	// replicas), maxWordRouters the routers in one word.
	maxWords       = 1024
	maxWordRouters = 4096
	// straightTellEvery is how often, at most, a replica logs that it
	// tells its words straight.
	straightTellEvery = time.Minute
)

// words is a replica's part in telling and relaying words.
type words struct {
	mu       sync.Mutex
	sub      *nats.Subscription // set while this replica is the relay
	pending  []byte             // words gathered as the relay
	n        int                // words in pending
	kick     chan struct{}      // one: the first word gathered waits
	heard    []word             // hearWords' scratch, and its texts
	text     texts
	waiting  time.Time // when its oldest word not heard back went to the relay (zero: none)
	straight time.Time // until when it tells its words straight
	said     time.Time // when it last logged so
	bad      uint64    // messages of words that could not be read
	badAt    time.Time // when it last logged one
	badTold  uint64    // bad, as of then
}

// word is one replica's word, read.
type word struct {
	id     string
	at     time.Time // by the teller's clock
	every  time.Duration
	counts []broker.Counts
}

// relayed says whether a fleet in which a replica hears peers others
// relays its words.
func relayed(peers int) bool { return peers+1 > relayFrom }

// keepRole makes this replica the relay, or no longer the relay, as the
// fleet it hears says. It runs at every tick and on every JSON word.
func (r *Replica) keepRole() {
	be := relayed(r.broker.Peers()) && r.broker.Relay() == r.cfg.ID
	w := &r.words
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case be && w.sub == nil:
		sub, err := r.nc.Subscribe(RelaySubject(r.cfg.Bucket), r.gatherWords)
		if err != nil {
			r.log.Debug("could not hear the relay subject", slog.Any("error", err))
			return
		}
		w.sub = sub
		r.log.Info("relaying the fleet's counts: its name comes first", slog.String("subject", RelaySubject(r.cfg.Bucket)))
	case !be && w.sub != nil:
		_ = w.sub.Unsubscribe()
		w.sub = nil
		r.log.Info("no longer relaying the fleet's counts")
	}
}

// tellWord tells this replica's counts, as of now, to the others: to the
// relay in a large fleet, unless it tells them straight.
func (r *Replica) tellWord(now time.Time, every time.Duration, counts []broker.Counts) error {
	wd := appendWord(nil, r.cfg.ID, now, every, counts)
	subject := StatsSubject(r.cfg.Bucket)
	w := &r.words
	w.mu.Lock()
	switch {
	case !relayed(r.broker.Peers()) || now.Before(w.straight):
	case w.sub != nil: // the relay: gathered with the others'
		w.mu.Unlock()
		r.addWords(wd, 1)
		return nil
	case !w.waiting.IsZero() && now.Sub(w.waiting) > echoWait:
		w.straight, w.waiting = now.Add(straightFor), time.Time{}
		if now.Sub(w.said) >= straightTellEvery {
			w.said = now
			r.log.Info("telling the counts straight to every replica for a while: the relay did not pass on this replica's word within "+echoWait.String(),
				slog.String("relay", safetext.Clip(r.broker.Relay(), 200)), slog.Duration("for", straightFor),
				slog.String("hint", "the relay is the replica whose name comes first; one that stopped without a goodbye is forgotten within three heartbeats, and a server whose permissions refuse "+RelaySubject(r.cfg.Bucket)+" keeps every replica telling straight"))
		}
	default:
		subject = RelaySubject(r.cfg.Bucket)
		if w.waiting.IsZero() {
			w.waiting = now
		}
	}
	w.mu.Unlock()
	return r.nc.PublishMsg(wordsMsg(subject, 1, wd))
}

// wordsMsg is a message of n words, encoded one after the other, on
// subject.
func wordsMsg(subject string, n int, encoded []byte) *nats.Msg {
	data := append(binary.AppendUvarint(make([]byte, 0, len(encoded)+binary.MaxVarintLen64), uint64(n)), encoded...)
	return &nats.Msg{Subject: subject, Header: nats.Header{countsHeader: []string{countsVersion}}, Data: data}
}

// gatherWords takes, as the relay, the words told on the relay subject.
func (r *Replica) gatherWords(m *nats.Msg) {
	ws, err := readWordsOf(m, nil, nil)
	if err != nil {
		r.tellBadWords(m.Subject, err)
		return
	}
	_, n := binary.Uvarint(m.Data)
	r.addWords(m.Data[n:], len(ws))
}

// addWords adds n words, encoded one after the other, to what the relay
// tells at most relayEvery later.
func (r *Replica) addWords(encoded []byte, n int) {
	w := &r.words
	w.mu.Lock()
	if w.n+n > maxWords {
		w.mu.Unlock()
		r.tellGathered()
		w.mu.Lock()
	}
	w.pending = append(w.pending, encoded...)
	w.n += n
	first := w.n == n
	w.mu.Unlock()
	if first {
		select {
		case w.kick <- struct{}{}:
		default:
		}
	}
}

// tellGathered tells the words the relay gathered, if any, in one message
// on the stats subject.
func (r *Replica) tellGathered() {
	w := &r.words
	w.mu.Lock()
	if w.n == 0 {
		w.mu.Unlock()
		return
	}
	m := wordsMsg(StatsSubject(r.cfg.Bucket), w.n, w.pending)
	w.pending, w.n = w.pending[:0], 0
	w.mu.Unlock()
	if err := r.nc.PublishMsg(m); err != nil {
		r.log.Debug("could not relay the counts", slog.Any("error", err))
	}
}

// hearWords takes the words told on the stats subject, straight or
// relayed; this replica's own says that the relay passed it on.
func (r *Replica) hearWords(m *nats.Msg) {
	ws, err := readWordsOf(m, r.words.heard, &r.words.text)
	r.words.heard = ws
	if err != nil {
		r.tellBadWords(m.Subject, err)
		return
	}
	now := time.Now()
	for _, wd := range ws {
		if wd.id == r.cfg.ID {
			r.words.mu.Lock()
			r.words.waiting = time.Time{}
			r.words.mu.Unlock()
			continue
		}
		r.broker.MergeTold(wd.id, wd.at, now, wd.every, wd.counts)
	}
}

// readWordsOf reads the words of m, a message of them, as readWords does.
func readWordsOf(m *nats.Msg, ws []word, text *texts) ([]word, error) {
	if v := m.Header.Get(countsHeader); v != countsVersion {
		return nil, fmt.Errorf("a version this replica cannot read (%q; it reads %q): a newer broker told it, so upgrade this one", safetext.Clip(v, 16), countsVersion)
	}
	if len(m.Data) > maxStats {
		return nil, fmt.Errorf("words: %d bytes, more than %d", len(m.Data), maxStats)
	}
	return readWords(m.Data, ws, text)
}

// tellBadWords logs a message of words that could not be read, at most
// once every txTellEvery with a count of the others.
func (r *Replica) tellBadWords(subject string, err error) {
	w := &r.words
	w.mu.Lock()
	defer w.mu.Unlock()
	w.bad++
	now := time.Now()
	if !w.badAt.IsZero() && now.Sub(w.badAt) < txTellEvery {
		return
	}
	r.log.Warn("ignoring a message of the replicas' counts that cannot be read", slog.String("subject", subject),
		slog.String("error", safetext.Line(err.Error())), slog.Uint64("ignored_since_last", w.bad-w.badTold-1),
		slog.String("hint", "replicas tell each other there their counts of calls; anything else is forged or from a broken client"))
	w.badAt, w.badTold = now, w.bad
}

// appendWord appends replica id's word to b: its name, when it told (unix
// nanoseconds), its heartbeat in milliseconds, then the number of routers
// and each: its path, calls chosen, reports, calls and failures, its last
// success, and the failures since (their number, then each). Numbers are
// varints.
func appendWord(b []byte, id string, at time.Time, every time.Duration, counts []broker.Counts) []byte {
	b = binary.AppendUvarint(b, uint64(len(id)))
	b = append(b, id...)
	b = binary.AppendVarint(b, nanos(at))
	b = binary.AppendUvarint(b, uint64(every.Milliseconds()))
	b = binary.AppendUvarint(b, uint64(len(counts)))
	for _, c := range counts {
		b = binary.AppendUvarint(b, uint64(len(c.Router)))
		b = append(b, c.Router...)
		for _, v := range [...]int64{c.Chosen, c.Reported, c.Calls, c.Failures, nanos(c.LastSuccess)} {
			b = binary.AppendVarint(b, v)
		}
		b = binary.AppendUvarint(b, uint64(len(c.Failing)))
		for _, t := range c.Failing {
			b = binary.AppendVarint(b, nanos(t))
		}
	}
	return b
}

// readWords reads a message of words into ws, whose counts it reuses:
// their number, then each (appendWord); names and paths are made strings
// by text. The whole message is read or none of it: more than maxWords
// words, a name empty or over MaxID, more than maxWordRouters routers or
// broker.MaxFailing failures, a path over maxDigestPath, or a byte too
// many or too few, and err says which. Counts are bounded when merged
// (broker.MergeTold).
func readWords(data []byte, ws []word, text *texts) ([]word, error) {
	d := decoder{b: data, what: "words"}
	n := d.uvarint()
	if d.err == nil && n > maxWords {
		d.fail("%d words, more than %d", n, maxWords)
	}
	ws = ws[:0]
	for i := uint64(0); i < n && d.err == nil; i++ {
		id := d.bytes(MaxID)
		if d.err == nil && len(id) == 0 {
			d.fail("word %d: no name", i)
		}
		ws = slices.Grow(ws, 1)[:len(ws)+1]
		wd := &ws[len(ws)-1]
		wd.id, wd.at, wd.every, wd.counts = text.of(id), unnanos(d.varint()), heartbeatOf(d.uvarint()), wd.counts[:0]
		routers := d.uvarint()
		if d.err == nil && routers > maxWordRouters {
			d.fail("word %d: %d routers, more than %d", i, routers, maxWordRouters)
		}
		for j := uint64(0); j < routers && d.err == nil; j++ {
			c := broker.Counts{Router: text.of(d.bytes(maxDigestPath))}
			c.Chosen, c.Reported, c.Calls, c.Failures = d.varint(), d.varint(), d.varint(), d.varint()
			c.LastSuccess = unnanos(d.varint())
			failing := d.uvarint()
			if d.err == nil && failing > broker.MaxFailing {
				d.fail("word %d: %d failures, more than %d", i, failing, broker.MaxFailing)
			}
			for k := uint64(0); k < failing && d.err == nil; k++ {
				c.Failing = append(c.Failing, unnanos(d.varint())) // fresh: the broker keeps it
			}
			wd.counts = append(wd.counts, c)
		}
	}
	if d.err == nil && len(d.b) > 0 {
		d.fail("%d bytes after the last word", len(d.b))
	}
	if d.err != nil {
		return ws[:0], d.err
	}
	return ws, nil
}

// texts makes the same names and paths, told over and over, one string
// each rather than one per word; it keeps at most maxTexts (anyone may
// publish names), and then starts again. One reader at a time; nil
// makes a string each time.
type texts struct{ m map[string]string }

const maxTexts = 4096

func (t *texts) of(b []byte) string {
	if t == nil {
		return string(b)
	}
	if s, ok := t.m[string(b)]; ok {
		return s
	}
	if t.m == nil || len(t.m) >= maxTexts {
		t.m = make(map[string]string)
	}
	s := string(b)
	t.m[s] = s
	return s
}

// heartbeatOf is a heartbeat told in milliseconds, held within
// StatsAtLeast and broker.MaxHeartbeat as StatsMessage.Heartbeat is.
func heartbeatOf(ms uint64) time.Duration {
	return time.Duration(min(max(ms, uint64(StatsAtLeast.Milliseconds())), uint64(broker.MaxHeartbeat.Milliseconds()))) * time.Millisecond
}

// relaying says whether this replica tells its words through the relay
// as of now.
func (r *Replica) relaying(now time.Time) bool {
	r.words.mu.Lock()
	defer r.words.mu.Unlock()
	return relayed(r.broker.Peers()) && !now.Before(r.words.straight)
}

// relayRefused is the server refusing this replica the relay subject:
// its words go straight to every replica for refusedFor, said once.
func (r *Replica) relayRefused(err error) {
	w := &r.words
	w.mu.Lock()
	defer w.mu.Unlock()
	now := time.Now()
	if now.Before(w.straight) && w.straight.Sub(now) > straightFor {
		return // said already
	}
	// A word refused is told again, straight, once its echo is overdue.
	w.straight = now.Add(refusedFor)
	r.log.Warn("the NATS server refuses the relay subject: this replica tells its counts straight to every replica, which costs the fleet more as it grows",
		slog.String("subject", RelaySubject(r.cfg.Bucket)), slog.String("error", safetext.Line(err.Error())), slog.Duration("for", refusedFor),
		slog.String("hint", "allow the replicas to publish and subscribe to "+RelaySubject(r.cfg.Bucket)+" (docs/security.md)"))
}

// awaitingEcho says whether a word this replica told the relay has not
// come back yet; echoOverdue, not within echoWait of now.
func (r *Replica) awaitingEcho() bool {
	r.words.mu.Lock()
	defer r.words.mu.Unlock()
	return !r.words.waiting.IsZero()
}

func (r *Replica) echoOverdue(now time.Time) bool {
	r.words.mu.Lock()
	defer r.words.mu.Unlock()
	return !r.words.waiting.IsZero() && now.Sub(r.words.waiting) > echoWait
}

// Word is one replica's counts as a binary word on the stats or relay
// subject says them: its name, when it told by its clock, and its
// counts per router (no latency or headroom: those come in its whole
// word, at its heartbeat).
type Word struct {
	ID     string
	At     time.Time
	Counts []broker.Counts
}

// Words reads the words m, a message on the stats or relay subject,
// carries (nil: not a message of words, or one that cannot be read), for
// `broker status` and tests.
func Words(m *nats.Msg) []Word {
	ws, err := readWordsOf(m, nil, nil)
	if err != nil {
		return nil
	}
	out := make([]Word, len(ws))
	for i, w := range ws {
		out[i] = Word{ID: w.id, At: w.at, Counts: w.counts}
	}
	return out
}

// WordsMessage is a message of ws on subject as a replica tells it,
// each with a heartbeat of a second: for tests.
func WordsMessage(subject string, ws ...Word) *nats.Msg {
	var b []byte
	for _, w := range ws {
		b = appendWord(b, w.ID, w.At, StatsAtLeast, w.Counts)
	}
	return wordsMsg(subject, len(ws), b)
}
