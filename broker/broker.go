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

// Store shares router health between replicas. *kv.Store implements it.
type Store interface {
	// Latest returns the last message on router's key: the live record
	// (live true), or the memo of its delete marker, with its revision.
	Latest(ctx context.Context, router string) (e kv.Entry, live bool, err error)
	// Update writes a live record if the key is still at rev, else gives
	// kv.ErrConflict.
	Update(ctx context.Context, r kv.Record, rev uint64) (uint64, error)
	// Release deletes the key, leaving memo, if it is still at rev, else
	// gives kv.ErrConflict.
	Release(ctx context.Context, memo kv.Record, rev uint64) (uint64, error)
}

// Config is what a Broker needs. Pools and Policy.DisabledTime are required.
type Config struct {
	Pools  []Pool
	Policy Policy
	// ID names this replica in the records it writes and probe claims.
	ID string
	// Store shares router health with other replicas; nil keeps it in
	// this process, as the original broker did.
	Store Store
	// Logger receives events; nil discards them.
	Logger *slog.Logger
}

// Broker answers gecholog's processor calls. Its methods are safe for
// concurrent use.
type Broker struct {
	pools     map[string]*pool  // by ingress; read-only after New
	routers   map[string]*route // every pool member; read-only after New
	policy    Policy
	id        string
	store     atomic.Pointer[storeRef] // nil until there is a store
	log       *slog.Logger
	malformed sometimes

	writes       sync.WaitGroup
	stopWrites   context.CancelFunc
	writeContext context.Context

	mu          sync.Mutex // guards the views in routers, timer, transitions, warned and pool.stranded
	timer       *time.Timer
	transitions map[transition]uint64
	warned      map[string]uint64 // router → revision last warned about

	calls       [numOutcomes]atomic.Uint64
	kvWrites    atomic.Uint64
	kvErrors    atomic.Uint64
	watchEvents atomic.Uint64
	lastWatch   atomic.Int64 // unix nanoseconds
}

type storeRef struct{ Store }

// shared returns the store, or nil in local mode.
func (b *Broker) shared() Store {
	if r := b.store.Load(); r != nil {
		return r.Store
	}
	return nil
}

// route is one router: the pools it serves and this replica's view of its
// health.
type route struct {
	path  string
	pools []*pool
	// clean is true when there is nothing a success report could change:
	// no live record and no failures counted. It lets the success path
	// skip the lock.
	clean atomic.Bool
	// claiming is true while this replica's claim on the probe is on its
	// way to the store.
	claiming atomic.Bool

	// The view, guarded by Broker.mu.
	live    *kv.Record // nil: no live record
	memo    kv.Record  // from the last delete marker
	rev     uint64     // revision of the last change the view holds
	pending bool       // this replica's own change is on its way to the store
	phase   Phase      // as last logged
	probe   *probeSlot // this replica's claim on the router's probe
}

// probeSlot is one probe this replica may send: the first request that
// takes the token sends the call.
type probeSlot struct {
	at     time.Time // the claim it belongs to
	token  atomic.Bool
	reply  []byte
	router string
}

type pool struct {
	ingress  string
	routers  []Router
	chosen   []atomic.Uint64 // choices by index in routers
	live     atomic.Pointer[choice]
	stranded bool // no router enabled; guarded by Broker.mu
}

// choice is an immutable snapshot of a pool, swapped whole when a view
// changes, so a request reads it without locking.
type choice struct {
	routers []string
	replies [][]byte // the encoded answer for each router
	cum     []int    // cumulative weights
	index   []int    // each router's index in pool.routers
	probes  []*probeSlot
	// unclaimed are routers on probation whose probe nobody holds: a
	// request claims it.
	unclaimed []*route
	// fallback answers when no router is enabled: the panic choice, or
	// with AllDisabled Any every router but manual ones (cumulative
	// weights in fallbackCum).
	fallback    [][]byte
	fallbackCum []int
	fallbackIdx []int
}

// New validates cfg and returns a Broker with every router enabled.
func New(cfg Config) (*Broker, error) {
	if err := ValidatePools(cfg.Pools); err != nil {
		return nil, err
	}
	policy, err := cfg.Policy.Resolve()
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b := &Broker{
		pools:        map[string]*pool{},
		routers:      map[string]*route{},
		policy:       policy,
		id:           cfg.ID,
		log:          log,
		malformed:    sometimes{every: 10 * time.Second},
		writeContext: ctx,
		stopWrites:   cancel,
		transitions:  map[transition]uint64{},
		warned:       map[string]uint64{},
	}
	for _, pc := range cfg.Pools {
		p := &pool{ingress: pc.Ingress, routers: pc.Routers, chosen: make([]atomic.Uint64, len(pc.Routers))}
		b.pools[p.ingress] = p
		for _, r := range p.routers {
			rt := b.routers[r.Path]
			if rt == nil {
				rt = &route{path: r.Path}
				rt.clean.Store(true)
				b.routers[r.Path] = rt
			}
			rt.pools = append(rt.pools, p)
		}
	}
	if cfg.Store != nil {
		b.store.Store(&storeRef{cfg.Store})
	}
	now := time.Now()
	for _, p := range b.pools {
		p.live.Store(b.snapshot(p, now))
	}
	return b, nil
}

// Attach starts sharing router health through s, for a replica that began
// without one (the server had no JetStream). From now on changes are
// written to s, and the disables this replica holds are carried over
// where s has no live record of its own.
func (b *Broker) Attach(s Store) {
	b.store.Store(&storeRef{s})
	b.mu.Lock()
	var carry []*route
	for _, rt := range b.routers {
		if rt.live != nil {
			rt.pending = true
			carry = append(carry, rt)
		}
	}
	b.mu.Unlock()
	for _, rt := range carry {
		b.write(rt, event{kind: carryOver, by: b.id, at: time.Now()})
	}
}

// Handle answers one processor message. A request context naming an ingress
// gets {"gl_path": chosen router}; everything else gets an empty answer
// (nil), which gecholog reads as "no change". A response context changes
// the router's health; any KV write happens after Handle returns.
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
	// Maps are indexed with string(m.path) in the index expression
	// itself, which Go does without allocating; the pool's own ingress
	// string goes on to choose.
	if !m.hasStatus {
		p := b.pools[string(m.path)]
		if p == nil {
			b.calls[NotIngress].Add(1)
			if b.log.Enabled(context.Background(), slog.LevelDebug) {
				b.log.Debug("not an ingress; leaving the call alone", slog.String("gl_path", clip(string(m.path))))
			}
			return nil
		}
		return b.choose(p.ingress)
	}
	rt := b.routers[string(m.path)]
	if !Failure(m.status) {
		b.calls[Succeeded].Add(1)
		if rt != nil && !rt.clean.Load() {
			b.report(rt, event{kind: success, status: m.status})
		}
		return nil
	}
	b.calls[Failed].Add(1)
	if rt != nil { // not the ingress itself, nor a router called directly
		ev := event{kind: failure, status: m.status}
		if m.status == 429 || m.status == 503 {
			ev.retryAfter = retryAfter(m.headers, time.Now())
		}
		b.report(rt, ev)
	}
	return nil
}

func (b *Broker) choose(ingress string) []byte {
	p := b.pools[ingress] // Handle calls with a pool's own ingress only
	c := p.live.Load()
	for _, rt := range c.unclaimed {
		// Traffic wants the probe: claim it in the background. Without
		// traffic nobody claims, and the key expires by itself.
		if rt.claiming.CompareAndSwap(false, true) {
			b.write(rt, event{kind: claim, by: b.id, at: time.Now()})
		}
	}
	for _, s := range c.probes {
		if s.token.CompareAndSwap(true, false) {
			b.calls[Chosen].Add(1)
			b.log.Info("sending the probe call", slog.String("router", s.router))
			return s.reply
		}
	}
	replies, cum, index, outcome := c.replies, c.cum, c.index, Chosen
	if len(replies) == 0 {
		replies, cum, index, outcome = c.fallback, c.fallbackCum, c.fallbackIdx, Panicked
		if len(replies) == 0 {
			b.calls[Stranded].Add(1)
			return nil
		}
	}
	i := 0
	if len(cum) > 1 {
		n := rand.IntN(cum[len(cum)-1])
		i = sort.Search(len(cum), func(i int) bool { return cum[i] > n })
	}
	b.calls[outcome].Add(1)
	p.chosen[index[i]].Add(1)
	if b.log.Enabled(context.Background(), slog.LevelDebug) {
		b.log.Debug("chose router", slog.String("ingress", ingress), slog.String("router", p.routers[index[i]].Path))
	}
	return replies[i]
}

// report applies ev to this replica's view at once, when the policy says
// it changes anything, and writes the change to the store in the
// background. A report that changes nothing costs no write.
func (b *Broker) report(rt *route, ev event) {
	ev.at, ev.by = time.Now(), b.id
	b.mu.Lock()
	ch, ok := b.policy.decide(rt.path, rt.live, rt.memo, ev)
	if !ok {
		b.mu.Unlock()
		return
	}
	b.apply(rt, ch, rt.rev, b.shared() != nil, ev.at)
	b.mu.Unlock()
	b.write(rt, ev)
}

// write runs ev against the store's current state in the background:
// read, decide, compare-and-set, again on a conflict. Network errors are
// retried until the event no longer matters.
func (b *Broker) write(rt *route, ev event) {
	if b.shared() == nil {
		return
	}
	b.writes.Add(1)
	go func() {
		defer b.writes.Done()
		defer b.settle(rt, ev.kind)
		failing := false
		deadline := ev.at.Add(b.policy.DisabledTime)
		for wait := 50 * time.Millisecond; time.Now().Before(deadline); wait = min(2*wait, 2*time.Second) {
			err := b.tryWrite(rt, ev)
			if err == nil {
				if failing {
					b.log.Info("router health written to the bucket after retrying", slog.String("router", rt.path))
				}
				return
			}
			if errors.Is(err, kv.ErrConflict) {
				continue // the key changed under us: decide again at once
			}
			if !failing && ev.kind != claim {
				b.log.Warn("could not write router health to the bucket; other replicas do not know yet; retrying",
					slog.String("router", rt.path), slog.Any("error", err))
				failing = true
			}
			select {
			case <-b.writeContext.Done():
				return
			case <-time.After(wait):
			}
		}
	}()
}

func (b *Broker) tryWrite(rt *route, ev event) error {
	ctx, cancel := context.WithTimeout(b.writeContext, 5*time.Second)
	defer cancel()
	store := b.shared()
	cur, live, err := store.Latest(ctx, rt.path)
	if err != nil {
		b.kvErrors.Add(1)
		return err
	}
	var liveRec *kv.Record
	memo := cur.Record
	if live {
		b.mu.Lock()
		cur.Record = b.sane(cur)
		b.mu.Unlock()
		liveRec, memo = &cur.Record, kv.Record{}
	}
	var ch change
	var ok bool
	if ev.kind == carryOver {
		// A disable held before the store was there: write it unless the
		// store has a live record, which then wins.
		b.mu.Lock()
		if !live && rt.live != nil {
			ch, ok = change{rec: *rt.live}, true
		}
		b.mu.Unlock()
	} else {
		ch, ok = b.policy.decide(rt.path, liveRec, memo, ev)
	}
	if !ok {
		// The store already says what this replica wanted, or something
		// that wins over it: take the store's word.
		ev := kv.Event{Router: rt.path, Revision: cur.Revision}
		if live {
			ev.Entry = &cur
		} else {
			ev.Memo = &cur.Record
		}
		b.observe(ev, true)
		return nil
	}
	var rev uint64
	if ch.release {
		rev, err = store.Release(ctx, ch.rec, cur.Revision)
	} else {
		rev, err = store.Update(ctx, ch.rec, cur.Revision)
	}
	b.countWrite(err)
	if err != nil {
		return err
	}
	written := kv.Event{Router: rt.path, Revision: rev}
	if ch.release {
		written.Memo = &ch.rec
	} else {
		written.Entry = &kv.Entry{Record: ch.rec, Revision: rev}
	}
	b.observe(written, true)
	return nil
}

// settle ends this replica's claim, or its own pending change, when the
// write is done or has given up.
func (b *Broker) settle(rt *route, kind eventKind) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if kind == claim {
		rt.claiming.Store(false)
	} else {
		rt.pending = false
	}
}

// Observe applies a change from the shared bucket to this replica's view.
// Changes to routers no pool knows are ignored.
func (b *Broker) Observe(ev kv.Event) {
	b.watchEvents.Add(1)
	b.lastWatch.Store(time.Now().UnixNano())
	b.observe(ev, false)
}

func (b *Broker) observe(ev kv.Event, own bool) {
	rt := b.routers[ev.Router]
	if rt == nil {
		if ev.Entry != nil {
			b.mu.Lock()
			if b.warned[ev.Router] == 0 {
				b.log.Warn("ignoring a record for a router no pool has; delete it with `nats kv del` if it is a mistake",
					slog.String("router", ev.Router))
			}
			b.warned[ev.Router] = ev.Revision
			b.mu.Unlock()
		}
		return
	}
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if ev.Revision != 0 && ev.Revision <= rt.rev {
		return // the view already holds this change or a later one
	}
	if !own && rt.pending && (ev.Entry == nil || phase(&ev.Entry.Record, now) == Enabled) {
		return // an older enable must not undo this replica's change on its way
	}
	ch := change{release: ev.Entry == nil}
	switch {
	case ev.Entry != nil:
		ch.rec = b.sane(*ev.Entry)
	case ev.Memo != nil:
		ch.rec = *ev.Memo
	}
	b.apply(rt, ch, ev.Revision, false, now)
}

// sane returns e's record with times no automatic disable could have: an
// Until beyond the longest disable, or none at all, and a probe claim
// beyond the probe timeout, counted from when the server stored the
// record. Such a record was written by hand or by a broken writer; taken
// at its word it would strand the router. Manual records are an
// operator's word and kept as they are. b.mu must be held.
func (b *Broker) sane(e kv.Entry) kv.Record {
	r := e.Record
	if r.Manual || e.Created.IsZero() {
		return r
	}
	const slack = time.Second // clocks of writer and server differ a little
	limit := e.Created.Add(b.policy.maxDuration() + slack)
	clamped := false
	if r.Until.IsZero() || r.Until.After(limit) {
		r.Until, clamped = limit, true
	}
	if r.Probe != nil && r.Probe.Until.After(e.Created.Add(b.policy.ProbeTimeout+slack)) {
		p := *r.Probe
		p.Until, r.Probe, clamped = e.Created.Add(b.policy.ProbeTimeout), &p, true
	}
	if clamped && b.warned[r.Router] != e.Revision {
		b.warned[r.Router] = e.Revision
		b.log.Warn("record reaches further than the failure policy allows; using the longest disable instead",
			slog.String("router", r.Router), slog.Time("until", e.Record.Until), slog.Time("clamped_to", r.Until),
			slog.Uint64("revision", e.Revision))
	}
	return r
}

// apply sets rt's view to ch, logs a change of phase, rebuilds the pools
// and re-arms the timer. b.mu must be held.
func (b *Broker) apply(rt *route, ch change, rev uint64, pending bool, now time.Time) {
	if ch.release {
		rt.live, rt.memo = nil, ch.rec
	} else {
		r := ch.rec
		rt.live = &r
	}
	rt.rev, rt.pending = rev, pending
	rt.clean.Store(rt.live == nil && rt.memo.Failures == 0)
	b.refresh(rt, now)
	b.arm(now)
}

// refresh brings rt's phase, probe slot and pools up to date at now, and
// claims the probe when the router is on probation and nobody holds it.
// b.mu must be held.
func (b *Broker) refresh(rt *route, now time.Time) {
	ph := phase(rt.live, now)
	var held *kv.Probe
	if ph == Probation && rt.live.Probe != nil && now.Before(rt.live.Probe.Until) {
		held = rt.live.Probe
	}
	if ph == Probation && held == nil && b.shared() == nil {
		// Local mode: this replica is the whole fleet and claims at once.
		rt.live.Probe = &kv.Probe{By: b.id, At: now, Until: now.Add(b.policy.ProbeTimeout)}
		held = rt.live.Probe
	}
	switch {
	case held != nil && held.By == b.id:
		if rt.probe == nil || !rt.probe.at.Equal(held.At) {
			rt.probe = &probeSlot{at: held.At, reply: reply(rt.path), router: rt.path}
			rt.probe.token.Store(true)
		}
	default:
		rt.probe = nil
	}
	for _, p := range rt.pools {
		b.rebuild(p, now)
	}
	// Logged after the snapshots changed, so a replica that has said a
	// router is out no longer chooses it.
	if ph != rt.phase {
		b.logPhase(rt, ph, now)
		rt.phase = ph
	}
}

func (b *Broker) logPhase(rt *route, ph Phase, now time.Time) {
	reason := "other"
	switch ph {
	case Enabled:
		cause := "deleted"
		switch {
		case rt.live != nil:
			cause = "manual disable ended"
		case rt.memo.Reason != "" && !rt.memo.Ended.IsZero():
			cause = rt.memo.Reason
		}
		reason = cause
		b.log.Info("router enabled", slog.String("router", rt.path), slog.String("cause", cause))
	case Disabled, Manual:
		r := rt.live
		reason = disableReason(*r)
		b.log.Warn("router disabled",
			slog.String("router", rt.path), slog.Int("status", r.Status),
			slog.String("reason", r.Reason), slog.Time("until", r.Until),
			slog.Int("backoff_level", r.Level), slog.Bool("manual", r.Manual), slog.String("by", r.By))
	case Probation:
		reason = "disable ended"
		b.log.Info("router on probation: one probe call decides", slog.String("router", rt.path))
	}
	b.transitions[transition{rt.path, ph.String(), reason}]++
}

// rebuild swaps in a new snapshot of p and logs when p runs out of
// enabled routers or has one again. b.mu must be held.
func (b *Broker) rebuild(p *pool, now time.Time) {
	c := b.snapshot(p, now)
	p.live.Store(c)
	switch {
	case len(c.routers) == 0 && !p.stranded:
		p.stranded = true
		msg := map[AllDisabled]string{
			Panic:   "every router of the pool is disabled; sending calls to the one whose disable ends soonest (panic mode)",
			Ingress: "every router of the pool is disabled; calls stay on the ingress router's own outbound",
			Any:     "every router of the pool is disabled; choosing among all of them",
		}[b.policy.AllDisabled]
		if len(c.fallback) == 0 && b.policy.AllDisabled != Ingress {
			msg = "every router of the pool is disabled by hand; calls stay on the ingress router's own outbound"
		}
		b.log.Warn(msg, slog.String("ingress", p.ingress))
	case len(c.routers) > 0 && p.stranded:
		p.stranded = false
		b.log.Info("pool has an enabled router again", slog.String("ingress", p.ingress))
	}
}

func (b *Broker) snapshot(p *pool, now time.Time) *choice {
	c := &choice{}
	total, all := 0, 0
	soonest := -1
	for i, r := range p.routers {
		rt := b.routers[r.Path]
		ph := phase(rt.live, now)
		if rt.probe != nil && rt.probe.token.Load() {
			c.probes = append(c.probes, rt.probe)
		}
		if ph == Probation && b.shared() != nil && !rt.pending &&
			(rt.live.Probe == nil || !now.Before(rt.live.Probe.Until)) {
			c.unclaimed = append(c.unclaimed, rt)
		}
		if ph != Manual {
			all += r.Weight
			c.fallback = append(c.fallback, reply(r.Path))
			c.fallbackCum = append(c.fallbackCum, all)
			c.fallbackIdx = append(c.fallbackIdx, i)
			if ph != Enabled && (soonest < 0 || rt.live.Until.Before(b.routers[p.routers[soonest].Path].live.Until)) {
				soonest = i
			}
		}
		if ph != Enabled {
			continue
		}
		total += r.Weight
		c.routers = append(c.routers, r.Path)
		c.replies = append(c.replies, reply(r.Path))
		c.cum = append(c.cum, total)
		c.index = append(c.index, i)
	}
	switch b.policy.AllDisabled {
	case Ingress:
		c.fallback, c.fallbackCum, c.fallbackIdx = nil, nil, nil
	case Panic:
		c.fallback, c.fallbackCum, c.fallbackIdx = nil, nil, nil
		if soonest >= 0 {
			c.fallback = [][]byte{reply(p.routers[soonest].Path)}
			c.fallbackCum = []int{1}
			c.fallbackIdx = []int{soonest}
		}
	}
	return c
}

// next is when rt's phase or probe claim changes by itself, or zero.
func next(rt *route, now time.Time) time.Time {
	r := rt.live
	switch phase(r, now) {
	case Manual, Disabled:
		return r.Until
	case Probation:
		if r.Probe != nil && now.Before(r.Probe.Until) {
			return r.Probe.Until
		}
	}
	return time.Time{}
}

// arm sets the timer to the earliest time a view changes by itself.
// b.mu must be held.
func (b *Broker) arm(now time.Time) {
	var at time.Time
	for _, rt := range b.routers {
		if t := next(rt, now); !t.IsZero() && (at.IsZero() || t.Before(at)) {
			at = t
		}
	}
	if b.timer != nil {
		b.timer.Stop()
		b.timer = nil
	}
	if !at.IsZero() {
		b.timer = time.AfterFunc(at.Sub(now), b.tick)
	}
}

// tick moves every view whose time has come: disables that end go on
// probation, lapsed probe claims are claimed again, manual disables that
// run out are enabled.
func (b *Broker) tick() {
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, rt := range b.routers {
		if rt.live != nil {
			b.refresh(rt, now)
		}
	}
	b.arm(now)
}

// Routers returns the routers a request for ingress is shared among now:
// the enabled ones.
func (b *Broker) Routers(ingress string) []string {
	if p := b.pools[ingress]; p != nil {
		return append([]string(nil), p.live.Load().routers...)
	}
	return nil
}

// Phase returns router's phase in this replica's view.
func (b *Broker) Phase(router string) Phase {
	rt := b.routers[router]
	if rt == nil {
		return Enabled
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return phase(rt.live, time.Now())
}

// Failures returns how many consecutive failures of router this replica's
// view has counted towards the threshold.
func (b *Broker) Failures(router string) int {
	rt := b.routers[router]
	if rt == nil {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if rt.live != nil {
		return 0
	}
	return rt.memo.Failures
}

// Close waits for writes on their way to the store until ctx ends, then
// abandons them, and stops the timer.
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

// clip shortens a string from a message for a log line: a path is short,
// and a megabyte of garbage in gl_path must not become a megabyte of log.
func clip(s string) string {
	const most = 200
	if len(s) <= most {
		return s
	}
	return s[:most] + fmt.Sprintf("... (%d bytes)", len(s))
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
