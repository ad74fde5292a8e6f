package replica

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/gecholog"
	"github.com/gecholog/broker/internal/safetext"
)

// gecholog publishes every finished call, whole, on its logger subject
// (service_bus.topic_exact_logger in gl_config.json). The replicas read
// it in a queue group (logQueue), so each call reaches one of them, which
// reads the router, the upstream's time and its rate-limit headers into
// its broker (Broker.Finished), for the latency and headroom strategies
// and for status, the tokens the call used (Broker.UsedIn), and where the
// call's session went (Broker.RememberHash), and tells the others the
// same as a digest (digest.go): each replica's counts are the fleet's,
// and each remembers alike.

const (
	// DefaultLoggerSilence is how long gecholog's transaction log may be
	// silent while a pool that needs it has calls chosen before a replica
	// says so.
	DefaultLoggerSilence = 10 * time.Second

	// A transaction holds a whole prompt and completion, so a replica that
	// falls behind must drop them rather than queue gigabytes: at most
	// 1,024 transactions or 64 MiB wait (eight of the largest read), and
	// beyond that the newest are dropped and counted. Each is read in
	// about a millisecond per megabyte.
	txPendingMsgs  = 1 << 10
	txPendingBytes = 64 << 20
	// txTellEvery is how often, at most, unreadable or dropped
	// transactions are logged.
	txTellEvery = 10 * time.Second
)

// TransactionCounts are what a replica made of gecholog's transaction log
// since it started.
type TransactionCounts struct {
	Read uint64 // read and handed to the broker
	// Shared counts the transactions another replica read and told this
	// one as digests, handed to the broker as if read: Read+Shared is
	// what the broker heard of the log.
	Shared     uint64
	TooLarge   uint64 // ignored unread: longer than gecholog.MaxTransaction
	Unreadable uint64 // ignored: not a transaction the broker can read
	Dropped    uint64 // dropped unread: they came faster than the replica read them
	// OutOfBounds counts transactions read of which a value was ignored:
	// an upstream time longer than the in-flight bound or negative, a
	// rate-limit header that cannot be read or whose reset is past what a
	// time holds, a token usage that cannot be read. The rest of each was
	// taken. Digests count here too.
	OutOfBounds uint64
	// BadDigests counts messages of digests that could not be read (on
	// the stats subject, forged or from a broken client), and Unshared
	// those this replica could not tell.
	BadDigests, Unshared uint64
}

// Transactions returns what the replica made of gecholog's transaction log.
func (r *Replica) Transactions() TransactionCounts {
	t := &r.tx
	c := TransactionCounts{Read: t.read.Load(), Shared: t.shared.Load(), TooLarge: t.tooLarge.Load(), Unreadable: t.unreadable.Load(),
		OutOfBounds: t.ignored.Load(), BadDigests: t.badDigests.Load(), Unshared: t.unshared.Load()}
	t.mu.Lock()
	defer t.mu.Unlock()
	c.Dropped = uint64(t.dropped)
	if t.sub != nil {
		if n, err := t.sub.Dropped(); err == nil {
			c.Dropped = uint64(n)
		}
	}
	return c
}

// txLog is a replica's reading of the transaction log. Its zero value is
// ready; hearTransactions starts it.
type txLog struct {
	calls                      gate // the handler, while it reads one; closed at stop
	read, tooLarge, unreadable atomic.Uint64
	ignored                    atomic.Uint64 // read, with a value out of bounds ignored
	shared, badDigests         atomic.Uint64 // digests taken; messages of them unread
	unshared                   atomic.Uint64 // messages of digests not told
	scratch                    []heard       // the digests being taken (hearDigests alone)

	mu             sync.Mutex
	sub            *nats.Subscription // nil once stopped
	dropped        int                // as of the last line or the stop
	droppedAt      time.Time          // the last line about drops
	unreadableAt   time.Time          // the last line about unreadable ones
	unreadableTold uint64             // unreadable and too large as of that line
	ignoredAt      time.Time          // the last line about values out of bounds
	ignoredTold    uint64             // such transactions as of that line
	badDigestAt    time.Time          // the last line about unreadable digests
	badDigestTold  uint64             // such messages as of that line
}

// hearTransactions subscribes to gecholog's transaction log, tells the
// others what it reads, and watches for the log's silence until the
// replica stops.
func (r *Replica) hearTransactions() error {
	sub, err := r.nc.QueueSubscribe(r.cfg.LoggerSubject, logQueue, r.hear)
	if err != nil {
		return err
	}
	if err := sub.SetPendingLimits(txPendingMsgs, txPendingBytes); err != nil {
		_ = sub.Unsubscribe()
		return err
	}
	r.tx.mu.Lock()
	r.tx.sub = sub
	r.tx.mu.Unlock()
	r.spawn(func(ctx context.Context) { gather(ctx.Done(), r.digests.kick, digestEvery, r.tellDigests) })
	r.spawn(func(ctx context.Context) {
		r.watchSilence(ctx, time.Now())
		r.tx.tellDropped(r.log, sub, true) // while the subscription still says
		r.tx.mu.Lock()
		r.tx.sub = nil
		r.tx.mu.Unlock()
		_ = sub.Unsubscribe()
		r.tx.calls.close() // a transaction being read is finished; no other starts
		r.tellDigests()    // what it read last, for the others
	})
	return nil
}

// hear reads one transaction into the broker. The upstream's time of a
// call that failed is no latency sample (a refused connection or a 429
// is quick, and would make the slowest router look the fastest), but
// whatever its rate-limit headers said counts: a 429's say none is left.
func (r *Replica) hear(m *nats.Msg) {
	t := &r.tx
	if !t.calls.enter() {
		return
	}
	defer t.calls.leave()
	tx, err := gecholog.ParseTransaction(m.Data)
	if err != nil {
		if len(m.Data) > gecholog.MaxTransaction {
			t.tooLarge.Add(1)
		} else {
			t.unreadable.Add(1)
		}
		t.tellUnreadable(r.log, m.Subject, err)
		return
	}
	var ignored []error
	latency, ok := tx.Latency()
	if latency < 0 {
		ignored = append(ignored, fmt.Errorf("%w: the upstream's timer runs backwards (%v)", errOutOfBounds, latency))
	}
	if !ok || tx.HasStatus && broker.Failure(tx.Status) {
		latency = 0
	}
	at := tx.Stop // OpenAI's resets count from the answer
	if at.IsZero() {
		at = time.Now()
	}
	var limits *broker.RateLimits
	l, bad := gecholog.RateLimits(tx.Headers, at)
	if l.Known() {
		// What is left counts the calls sent before this one (see
		// broker.RateLimits.Sent), and orders the answers.
		l.Sent, l.Answered = tx.Start, tx.Stop
		limits = &l
	}
	if bad > 0 {
		ignored = append(ignored, fmt.Errorf("%w: %d rate-limit header(s) that cannot be read, or whose reset is past the year 2262", errOutOfBounds, bad))
	}
	h := heard{ingress: tx.Ingress, router: tx.Router, latency: latency, limits: limits, usage: tx.Usage, began: tx.Start}
	h.session, h.keyed = broker.SessionHash(tx.Session)
	ignored = append(ignored, r.take(&h)...)
	r.share(&h)
	if len(ignored) > 0 {
		t.ignored.Add(1)
		t.tellIgnored(r.log, m.Subject, string(tx.Router), errors.Join(ignored...))
	}
	// Counted once all of it is heard: whoever sees the count finds the
	// transaction in the view and its ignored values counted.
	t.read.Add(1)
}

// errOutOfBounds marks a value of a transaction that was ignored.
var errOutOfBounds = errors.New("ignored")

// tellIgnored logs a transaction of which a value was ignored as beyond
// its bound, at most once every txTellEvery with a count of the others.
func (t *txLog) tellIgnored(log *slog.Logger, subject, router string, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Now()
	if !t.ignoredAt.IsZero() && now.Sub(t.ignoredAt) < txTellEvery {
		return
	}
	n := t.ignored.Load()
	log.Warn("ignoring a value of a transaction from gecholog's log that is out of bounds", slog.String("subject", subject),
		slog.String("router", safetext.Clip(router, safetext.MaxShown)), slog.String("error", safetext.Line(err.Error())),
		slog.Uint64("ignored_since_last", n-t.ignoredTold-1))
	t.ignoredAt, t.ignoredTold = now, n
}

// tellUnreadable logs a transaction that could not be read, at most once
// every txTellEvery with a count of the others.
func (t *txLog) tellUnreadable(log *slog.Logger, subject string, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Now()
	if !t.unreadableAt.IsZero() && now.Sub(t.unreadableAt) < txTellEvery {
		return
	}
	n := t.tooLarge.Load() + t.unreadable.Load()
	log.Warn("ignoring a transaction from gecholog's log that cannot be read", slog.String("subject", subject),
		slog.Any("error", err), slog.Uint64("ignored_since_last", n-t.unreadableTold-1))
	t.unreadableAt, t.unreadableTold = now, n
}

// tellDropped logs the transactions sub dropped because its queue was
// full: when drops start, then at most once every txTellEvery with the
// count since the last line, and the rest at the stop (final).
func (t *txLog) tellDropped(log *slog.Logger, sub *nats.Subscription, final bool) {
	dropped, err := sub.Dropped()
	if err != nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if dropped <= t.dropped || !final && time.Since(t.droppedAt) < txTellEvery {
		return
	}
	log.Warn("dropping transactions from gecholog's log: they come faster than this replica reads them",
		slog.String("subject", sub.Subject), slog.Int("dropped_transactions", dropped-t.dropped),
		slog.Int("dropped_transactions_total", dropped),
		slog.String("hint", "the latency and headroom statistics miss the calls dropped; give the replica more CPU"))
	t.dropped, t.droppedAt = dropped, time.Now()
}

// watchSilence says once when the transaction log is first heard, and
// once when it is silent for LoggerSilence while a pool that needs it has
// calls chosen (and once more each time it is heard again and then falls
// silent again), until ctx ends.
func (r *Replica) watchSilence(ctx context.Context, start time.Time) {
	w := newSilenceWatch(r.cfg.Pools, r.cfg.LoggerSilence, start)
	tick := time.NewTicker(min(max(r.cfg.LoggerSilence/10, 10*time.Millisecond), time.Second))
	defer tick.Stop()
	subject := r.cfg.LoggerSubject
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			chosen := map[string]uint64{}
			if len(w.pools) > 0 {
				for _, c := range r.broker.Stats().Choices {
					chosen[c.Ingress] += c.N
				}
			}
			switch ev, silent := w.look(now, r.broker.Heard(), chosen); ev {
			case heardFirst:
				r.log.Info("hearing gecholog's transaction log", slog.String("subject", subject))
			case heardAgain:
				r.log.Info("hearing gecholog's transaction log again", slog.String("subject", subject))
			case fellSilent:
				strategies := make([]string, 0, len(silent))
				for _, p := range silent {
					strategies = append(strategies, w.pools[p])
				}
				slices.Sort(strategies)
				r.log.Warn("gecholog's transaction log is silent: the pools that choose by it choose without it until it is heard",
					slog.String("strategy", strings.Join(slices.Compact(strategies), ",")),
					slog.String("pools", strings.Join(silent, ",")), slog.String("subject", subject),
					slog.Duration("silent_for", now.Sub(w.since).Round(time.Millisecond)),
					slog.String("hint", `gecholog publishes each finished call on service_bus.topic_exact_logger in its gl_config.json: make it "`+subject+
						`" (or set BROKER_LOGGER_SUBJECT to gecholog's), and let the broker's NATS user subscribe to it`))
			}
		}
	}
}

// silenceEvent is what a look at the transaction log finds to say.
type silenceEvent int

const (
	nothingNew silenceEvent = iota
	heardFirst              // the first transaction since the replica started
	heardAgain              // a transaction after the log, heard before, was said to be silent
	fellSilent              // silent for the whole limit while pools that need it had calls chosen
)

// silenceWatch decides when to say that the transaction log is silent.
// It is fed looks at the broker: when it last heard a transaction, and
// the calls chosen so far for each pool.
type silenceWatch struct {
	limit time.Duration
	pools map[string]string // the pools that need the log: ingress → strategy

	heard  time.Time         // the last transaction heard, as of the last look
	since  time.Time         // when the current silence began: heard, or the start
	busy   time.Time         // the first look in this silence at which such a pool had calls chosen
	chosen map[string]uint64 // the calls chosen for each such pool, as of the last look
	warned bool              // this silence was said
}

func newSilenceWatch(pools []broker.Pool, limit time.Duration, start time.Time) *silenceWatch {
	w := &silenceWatch{limit: limit, pools: map[string]string{}, since: start, chosen: map[string]uint64{}}
	for _, p := range pools {
		if p.NeedsTransactionLog() {
			w.pools[p.Ingress] = p.StrategyName()
		}
	}
	return w
}

// look takes the broker as it is at now: it last heard a transaction at
// heard (zero: never), and chosen holds the calls chosen so far per pool.
// A silence is said when, for the whole limit, pools that need the log
// have had calls chosen and no transaction was heard; silent names the
// pools with calls chosen since the last look, sorted.
func (w *silenceWatch) look(now, heard time.Time, chosen map[string]uint64) (ev silenceEvent, silent []string) {
	if heard.After(w.heard) {
		switch {
		case w.heard.IsZero():
			ev = heardFirst
		case w.warned:
			ev = heardAgain
		}
		w.heard, w.since, w.busy, w.warned = heard, heard, time.Time{}, false
	}
	var busy []string
	for p := range w.pools {
		if chosen[p] > w.chosen[p] {
			busy = append(busy, p)
		}
		w.chosen[p] = chosen[p]
	}
	if len(busy) == 0 || w.warned {
		return ev, nil
	}
	if w.busy.IsZero() {
		w.busy = now
	}
	if now.Sub(w.busy) < w.limit {
		return ev, nil
	}
	w.warned = true
	slices.Sort(busy)
	return fellSilent, busy
}
