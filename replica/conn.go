package replica

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gecholog/broker/internal/natsconn"
)

// natsOptions are the connection's options: authentication and TLS, and a
// connection that never gives up on the gateway's bus.
func (r *Replica) natsOptions() ([]nats.Option, error) {
	auth, err := r.cfg.NATS.Options()
	if err != nil {
		return nil, err
	}
	log := r.log
	return append(auth,
		nats.Name("gecholog-broker "+r.cfg.ID),
		nats.MaxReconnects(-1),                   // as the original: never give up on the gateway's bus
		nats.ReconnectWait(250*time.Millisecond), // plus nats.go's jitter, so replicas do not come back in step
		// A server cut off by a partition sends nothing and resets nothing:
		// only a missing PONG tells. nats.go pings every 2 minutes by
		// default; a ping every 2 s, 2 unanswered, finds a dead link in 4
		// to 6 s for one small message each way, and a process starved of
		// CPU for a few seconds (a burst on a busy machine) keeps its
		// connection and the calls queued on it. A write to a dead link
		// blocks the connection (and everything that takes its lock) for
		// at most the flusher's timeout, a minute by default. (A replica
		// whose bucket does not answer moves sooner: see keepReach.)
		nats.PingInterval(pingInterval),
		nats.MaxPingsOutstanding(maxPingsOut),
		nats.FlusherTimeout(flusherTimeout),
		nats.ReconnectToServer(r.link.next),
		nats.ClosedHandler(func(*nats.Conn) { r.link.down() }),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			r.link.down()
			if err != nil {
				log.Warn("disconnected from NATS; reconnecting", slog.Any("error", err))
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			r.link.set(nc)
			log.Info("reconnected to NATS", slog.String("server", natsconn.Redact(nc.ConnectedUrl())))
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if sub != nil && errors.Is(err, nats.ErrSlowConsumer) {
				if sub.Queue == "" && sub.Subject == r.cfg.LoggerSubject {
					r.tx.tellDropped(log, sub, false) // statistics, not calls
					return
				}
				r.drops.tell(log, sub, false)
				return
			}
			if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), strconv.Quote(RelaySubject(r.cfg.Bucket))) {
				r.relayRefused(err)
				return
			}
			attrs := []any{slog.Any("error", err)}
			if sub != nil {
				attrs = append(attrs, slog.String("subject", sub.Subject))
			}
			if transient(err) {
				// The connection broke mid-write: the reconnect that
				// follows is logged, and nothing needs fixing.
				log.Warn("NATS connection error; reconnecting", attrs...)
				return
			}
			log.Error("NATS error", attrs...)
		}),
	), nil
}

// How soon a stalled connection is found dead: see natsOptions.
const (
	pingInterval   = 2 * time.Second
	maxPingsOut    = 2
	flusherTimeout = 4 * time.Second
)

// dropEvery is how often, at most, a subscription that keeps dropping
// messages is logged.
const dropEvery = 10 * time.Second

// drops logs the messages a subscription dropped because its queue was
// full: one line when it starts, then at most one every dropEvery with the
// count since the last, and the rest when the replica stops. nats.go
// reports a slow consumer each time the queue, having taken a message,
// drops the next, which under a long burst is every few milliseconds.
type drops struct {
	mu   sync.Mutex
	told map[*nats.Subscription]dropsTold
}

type dropsTold struct {
	at    time.Time
	count int // dropped as of the last line
}

// tell logs sub's drops unless a line went out within dropEvery; final
// logs any untold drops whatever the time.
func (d *drops) tell(log *slog.Logger, sub *nats.Subscription, final bool) {
	dropped, err := sub.Dropped()
	if err != nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	last := d.told[sub]
	if dropped <= last.count || !final && time.Since(last.at) < dropEvery {
		return
	}
	if d.told == nil {
		d.told = map[*nats.Subscription]dropsTold{}
	}
	d.told[sub] = dropsTold{at: time.Now(), count: dropped}
	log.Error("NATS error", slog.Any("error", nats.ErrSlowConsumer), slog.String("subject", sub.Subject),
		slog.Int("dropped_calls", dropped-last.count), slog.Int("dropped_calls_total", dropped),
		slog.String("hint", "calls arrive faster than this replica answers them; run more replicas"))
}

// connect dials the servers until they answer, or returns nil when ctx
// ends first. Failures are logged when they start and then every half
// minute, not every second, and never with a credential in them.
func connect(ctx context.Context, s natsconn.Settings, opts []nats.Option, log *slog.Logger) *nats.Conn {
	for attempt := 0; ; attempt++ {
		nc, err := nats.Connect(s.Servers, opts...)
		if err == nil {
			return nc
		}
		if attempt%30 == 0 {
			log.Warn("cannot connect to NATS; retrying every second", slog.String("server", s.Redacted()),
				slog.Any("error", s.Scrub(err)), slog.String("hint", natsconn.Hint(err)))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

// transient reports whether err is the connection breaking, which a
// reconnect mends, rather than something to fix (a permission refused).
func transient(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, nats.ErrConnectionClosed)
}
