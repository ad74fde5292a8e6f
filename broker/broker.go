package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gecholog/broker/kv"
)

// Store shares disables between replicas. *kv.Store implements it.
type Store interface {
	// Create writes r if its router has no live record, else gives kv.ErrExists.
	Create(ctx context.Context, r kv.Record) (uint64, error)
	// Get returns the router's live record or kv.ErrNotFound.
	Get(ctx context.Context, router string) (kv.Entry, error)
	// Update replaces the record at rev, or gives kv.ErrConflict.
	Update(ctx context.Context, r kv.Record, rev uint64) (uint64, error)
}

// Config is what a Broker needs. Pools and DisabledTime are required.
type Config struct {
	Pools []Pool
	// DisabledTime is how long a failed router stays out of its pools.
	DisabledTime time.Duration
	// ID names this replica in the records it writes.
	ID string
	// Store shares disables with other replicas; nil keeps them in this
	// process, as the original broker did.
	Store Store
	// Logger receives events; nil discards them.
	Logger *slog.Logger
}

// Broker answers gecholog's processor calls. Its methods are safe for
// concurrent use.
type Broker struct {
	pools        map[string]*pool   // by ingress; read-only after New
	member       map[string][]*pool // router → the pools it serves; read-only
	disabledTime time.Duration
	id           string
	store        Store
	log          *slog.Logger
	malformed    sometimes

	writes       sync.WaitGroup
	stopWrites   context.CancelFunc
	writeContext context.Context

	mu          sync.Mutex
	disabled    map[string]disable // the view: routers out of their pools
	timer       *time.Timer        // fires at the earliest Until in disabled
	transitions map[transition]uint64

	calls       [numOutcomes]atomic.Uint64
	kvWrites    atomic.Uint64
	kvErrors    atomic.Uint64
	watchEvents atomic.Uint64
	lastWatch   atomic.Int64 // unix nanoseconds
}

// disable is one router's entry in the view.
type disable struct {
	rec kv.Record
	// rev is the record's bucket revision; 0 while this replica's own write
	// is on its way, so that older deletions do not undo it.
	rev uint64
}

type pool struct {
	ingress  string
	routers  []Router
	chosen   []atomic.Uint64 // choices by index in routers
	live     atomic.Pointer[choice]
	stranded bool // every router disabled; guarded by Broker.mu
}

// choice is an immutable snapshot of a pool's enabled routers, swapped
// whole when the view changes, so a request reads it without locking.
type choice struct {
	routers []string
	replies [][]byte // the encoded answer for each router
	cum     []int    // cumulative weights
	index   []int    // each router's index in pool.routers
}

// New validates cfg and returns a Broker with every router enabled.
func New(cfg Config) (*Broker, error) {
	if err := ValidatePools(cfg.Pools); err != nil {
		return nil, err
	}
	if cfg.DisabledTime <= 0 {
		return nil, fmt.Errorf("disabled time %v: must be positive", cfg.DisabledTime)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b := &Broker{
		pools:        map[string]*pool{},
		member:       map[string][]*pool{},
		disabledTime: cfg.DisabledTime,
		id:           cfg.ID,
		store:        cfg.Store,
		log:          log,
		malformed:    sometimes{every: 10 * time.Second},
		writeContext: ctx,
		stopWrites:   cancel,
		disabled:     map[string]disable{},
		transitions:  map[transition]uint64{},
	}
	for _, pc := range cfg.Pools {
		p := &pool{ingress: pc.Ingress, routers: pc.Routers, chosen: make([]atomic.Uint64, len(pc.Routers))}
		b.pools[p.ingress] = p
		for _, r := range p.routers {
			b.member[r.Path] = append(b.member[r.Path], p)
		}
		p.live.Store(b.snapshot(p, time.Now()))
	}
	return b, nil
}

// Handle answers one processor message. A request context naming an ingress
// gets {"gl_path": chosen router}; everything else gets an empty answer
// (nil), which gecholog reads as "no change". A response context reporting a
// failure disables the router; the KV write happens after Handle returns.
func (b *Broker) Handle(data []byte) []byte {
	m, err := parse(data)
	if err != nil {
		b.calls[Malformed].Add(1)
		b.malformed.do(func(suppressed int) {
			b.log.Warn("ignoring malformed processor message",
				slog.Any("error", err), slog.Int("suppressed_since_last", suppressed))
		})
		return nil
	}
	if m.Status == nil {
		return b.choose(*m.GLPath)
	}
	if Failure(*m.Status) {
		b.calls[Failed].Add(1)
		b.fail(*m.GLPath, *m.Status)
	} else {
		b.calls[Succeeded].Add(1)
	}
	return nil
}

func (b *Broker) choose(ingress string) []byte {
	p := b.pools[ingress]
	if p == nil {
		b.calls[NotIngress].Add(1)
		if b.log.Enabled(context.Background(), slog.LevelDebug) {
			b.log.Debug("not an ingress; leaving the call alone", slog.String("gl_path", ingress))
		}
		return nil
	}
	c := p.live.Load()
	if len(c.routers) == 0 {
		b.calls[Stranded].Add(1)
		return nil
	}
	i := 0
	if len(c.cum) > 1 {
		n := rand.IntN(c.cum[len(c.cum)-1])
		i = sort.Search(len(c.cum), func(i int) bool { return c.cum[i] > n })
	}
	b.calls[Chosen].Add(1)
	p.chosen[c.index[i]].Add(1)
	if b.log.Enabled(context.Background(), slog.LevelDebug) {
		b.log.Debug("chose router", slog.String("ingress", ingress), slog.String("router", c.routers[i]))
	}
	return c.replies[i]
}

// fail disables router in this replica's view at once and writes the
// disable to the store in the background. A router already disabled costs
// nothing: one write per disable.
func (b *Broker) fail(router string, status int) {
	if b.member[router] == nil {
		return // not a pool member: the ingress itself, or a router called directly
	}
	now := time.Now()
	b.mu.Lock()
	if d, ok := b.disabled[router]; ok && d.rec.ActiveAt(now) {
		b.mu.Unlock()
		return
	}
	rec := kv.Record{
		Router: router,
		Status: status,
		Reason: fmt.Sprintf("egress_status_code %d", status),
		At:     now,
		Until:  now.Add(b.disabledTime),
		By:     b.id,
	}
	b.set(router, &disable{rec: rec}, now)
	b.mu.Unlock()
	if b.store != nil {
		b.writes.Add(1)
		go b.write(rec)
	}
}

// write shares rec through the store. If another replica disabled the
// router first, its record stands and this one is dropped. Network errors
// are retried until the disable would have ended anyway.
func (b *Broker) write(rec kv.Record) {
	defer b.writes.Done()
	failing := false
	for wait := 50 * time.Millisecond; time.Now().Before(rec.Until); wait = min(2*wait, 2*time.Second) {
		err := b.tryWrite(rec)
		if err == nil {
			if failing {
				b.log.Info("disable shared with the other replicas after retrying", slog.String("router", rec.Router))
			}
			return
		}
		if errors.Is(err, kv.ErrConflict) || errors.Is(err, kv.ErrNotFound) {
			continue // the key changed under us: look again at once
		}
		if !failing {
			b.log.Warn("could not write disable to the bucket; other replicas keep using the router until it is written; retrying",
				slog.String("router", rec.Router), slog.Any("error", err))
			failing = true
		}
		select {
		case <-b.writeContext.Done():
			return
		case <-time.After(wait):
		}
	}
}

func (b *Broker) tryWrite(rec kv.Record) error {
	ctx, cancel := context.WithTimeout(b.writeContext, 5*time.Second)
	defer cancel()
	rev, err := b.store.Create(ctx, rec)
	b.countWrite(err)
	if errors.Is(err, kv.ErrExists) {
		var e kv.Entry
		if e, err = b.store.Get(ctx, rec.Router); err != nil {
			return err
		}
		if e.Record.ActiveAt(time.Now()) {
			b.Observe(kv.Event{Router: rec.Router, Entry: &e, Revision: e.Revision})
			return nil
		}
		// An ended disable whose key is not gone yet: TTLs end on whole
		// seconds, and without TTLs the janitor deletes a little later.
		rev, err = b.store.Update(ctx, rec, e.Revision)
		b.countWrite(err)
	}
	if err != nil {
		return err
	}
	b.Observe(kv.Event{Router: rec.Router, Entry: &kv.Entry{Record: rec, Revision: rev}, Revision: rev})
	return nil
}

// Observe applies a change from the shared bucket to this replica's view.
// Changes to routers no pool knows are ignored.
func (b *Broker) Observe(ev kv.Event) {
	b.watchEvents.Add(1)
	b.lastWatch.Store(time.Now().UnixNano())
	if b.member[ev.Router] == nil {
		return
	}
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	cur, had := b.disabled[ev.Router]
	if had && cur.rev > ev.Revision && ev.Revision != 0 {
		return // older than what the view holds
	}
	if ev.Entry == nil || !ev.Entry.Record.ActiveAt(now) {
		if had && cur.rev == 0 && ev.Revision != 0 {
			return // a deletion from before this replica's own pending disable
		}
		b.set(ev.Router, nil, now)
		return
	}
	b.set(ev.Router, &disable{rec: ev.Entry.Record, rev: ev.Entry.Revision}, now)
}

// set puts router's entry in the view (d nil: enabled), logs the
// transition, rebuilds the router's pools and re-arms the expiry timer.
// b.mu must be held.
func (b *Broker) set(router string, d *disable, now time.Time) {
	_, was := b.disabled[router]
	if d == nil {
		if !was {
			return
		}
		cause := "deleted"
		if old := b.disabled[router]; !old.rec.ActiveAt(now) {
			cause = "expired"
		}
		delete(b.disabled, router)
		b.transitions[transition{router, "enabled", cause}]++
		b.log.Info("router enabled", slog.String("router", router), slog.String("cause", cause))
	} else {
		if !was {
			b.transitions[transition{router, "disabled", disableReason(d.rec)}]++
			b.log.Warn("router disabled",
				slog.String("router", router), slog.Int("status", d.rec.Status),
				slog.String("reason", d.rec.Reason), slog.Time("until", d.rec.Until),
				slog.String("by", d.rec.By))
		}
		b.disabled[router] = *d
	}
	for _, p := range b.member[router] {
		b.rebuild(p, now)
	}
	b.arm(now)
}

// rebuild swaps in a new snapshot of p's enabled routers and logs when p
// becomes stranded or usable again. b.mu must be held.
func (b *Broker) rebuild(p *pool, now time.Time) {
	c := b.snapshot(p, now)
	p.live.Store(c)
	switch {
	case len(c.routers) == 0 && !p.stranded:
		p.stranded = true
		b.log.Warn("every router of the pool is disabled; calls stay on the ingress router's own outbound",
			slog.String("ingress", p.ingress))
	case len(c.routers) > 0 && p.stranded:
		p.stranded = false
		b.log.Info("pool has an enabled router again", slog.String("ingress", p.ingress))
	}
}

func (b *Broker) snapshot(p *pool, now time.Time) *choice {
	c := &choice{}
	total := 0
	for i, r := range p.routers {
		if d, ok := b.disabled[r.Path]; ok && d.rec.ActiveAt(now) {
			continue
		}
		total += r.Weight
		c.routers = append(c.routers, r.Path)
		c.replies = append(c.replies, reply(r.Path))
		c.cum = append(c.cum, total)
		c.index = append(c.index, i)
	}
	return c
}

// arm sets the timer to the earliest end of a disable. b.mu must be held.
func (b *Broker) arm(now time.Time) {
	var next time.Time
	for _, d := range b.disabled {
		if !d.rec.Until.IsZero() && (next.IsZero() || d.rec.Until.Before(next)) {
			next = d.rec.Until
		}
	}
	if b.timer != nil {
		b.timer.Stop()
		b.timer = nil
	}
	if !next.IsZero() {
		b.timer = time.AfterFunc(next.Sub(now), b.expire)
	}
}

// expire enables every router whose disable has ended. The bucket's TTL or
// janitor removes the key too, a little later; the view goes by Until.
func (b *Broker) expire() {
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	for router, d := range b.disabled {
		if !d.rec.ActiveAt(now) {
			b.set(router, nil, now)
		}
	}
	b.arm(now)
}

// Routers returns the routers a request for ingress may be sent to now.
func (b *Broker) Routers(ingress string) []string {
	if p := b.pools[ingress]; p != nil {
		return append([]string(nil), p.live.Load().routers...)
	}
	return nil
}

// Close waits for disables on their way to the store until ctx ends, then
// abandons them, and stops the expiry timer.
func (b *Broker) Close(ctx context.Context) {
	done := make(chan struct{})
	go func() { b.writes.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
	b.stopWrites()
	b.writes.Wait()
	b.mu.Lock()
	if b.timer != nil {
		b.timer.Stop()
	}
	b.mu.Unlock()
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
