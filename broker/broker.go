package broker

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Config is what a Broker needs. Pools and Policy.DisabledTime are required.
type Config struct {
	Pools  []Pool
	Policy Policy
	// ID names this replica in the records it writes and probe claims.
	ID string
	// Store shares router health with other replicas; nil keeps it in
	// this process, as the original broker did.
	Store Store
	// Logger receives events; nil discards them. Whether it takes debug
	// lines is asked once, here: a line per call is at debug, and asking
	// on every call costs the request's path.
	Logger *slog.Logger
	// InFlightBound is how long a chosen call counts as in flight when its
	// report never comes (DefaultInFlightBound).
	InFlightBound time.Duration
	// AnnouncementHold bounds how long a disable another replica
	// announced holds a router out without the store confirming it
	// (DefaultAnnouncementHold).
	AnnouncementHold time.Duration
	// MaxCallTokens is the most tokens one call counts with (Used);
	// 0 is DefaultMaxCallTokens.
	MaxCallTokens int64
}

// DefaultInFlightBound is how long a call counts as in flight at most:
// longer than any LLM call gecholog waits for.
const DefaultInFlightBound = 5 * time.Minute

// DefaultAnnouncementHold is how long a disable another replica announced
// holds a router out at most without the store confirming it. An honest
// announcement lands within a second, or when an election of the store's
// leader ends (seconds); one forged message on the news subject costs at
// most this long.
const DefaultAnnouncementHold = 30 * time.Second

// InFlightBoundRange is the in-flight bounds New accepts.
var InFlightBoundRange = Range[time.Duration]{Min: time.Second, Max: 24 * time.Hour}

// Broker is one replica's decision core: it chooses a router for each
// call to an ingress, hears how calls went, and keeps its view of every
// router's health in step with the other replicas through a Store. Its
// methods are safe for concurrent use; none of them waits on the network.
type Broker struct {
	// tab is the configuration in force: pools, routers and policy. A
	// call loads it once and sees one revision whole; Reconfigure swaps
	// it under mu.
	tab     atomic.Pointer[table]
	every   map[string]*route        // every router ever a member, by path; guarded by mu
	spends  map[string]*poolBudget   // every pool's budget ever given, by ingress; guarded by mu
	names   atomic.Pointer[[]string] // every router ever a member, by id
	id      string
	hold    time.Duration            // see Config.AnnouncementHold
	store   atomic.Pointer[storeRef] // nil until there is a store
	log     *slog.Logger
	debug   bool            // log takes debug lines (see Config.Logger)
	unknown map[string]bool // routers no pool has whose records were warned about; guarded by mu

	writeContext context.Context
	wakeMu       sync.Mutex
	wake         chan struct{} // closed by RetryWrites; nil until a write first waits
	stopWrites   context.CancelFunc

	mu          sync.Mutex // guards closed, the views in routers, unknown, timer, transitions and pool.stranded
	closed      bool
	writes      sync.WaitGroup // background writes; added to under mu while not closed
	ticks       sync.WaitGroup // the timer's callback, armed or running
	timer       *time.Timer
	transitions map[transition]uint64

	fleet fleet // the other replicas' counts
	quiet quiet // see Quiet

	failureReports failureReports
	heard          atomic.Int64 // unix nanoseconds of the last transaction heard of; 0: none
	otherUse       usageCounts  // the tokens of calls to paths no pool has
	maxCallTokens  int64        // see Config.MaxCallTokens

	calls       [numOutcomes]atomic.Uint64
	sessions    sessionCounts // calls of pools with affinity
	memory      sessionMemory // where sessions went, from the transaction log
	kvWrites    atomic.Uint64
	kvErrors    atomic.Uint64
	kvFailures  [len(WriteCauses)]atomic.Uint64
	watchEvents atomic.Uint64
	lastWatch   atomic.Int64  // unix nanoseconds
	repairs     atomic.Uint64 // views Verify found differing from the store
}

type storeRef struct{ Store }

// table is one revision of the configuration, immutable once stored.
type table struct {
	pools   map[string]*pool  // by ingress
	order   []string          // the pools' ingresses in the configured order
	routers map[string]*route // every pool member by path
	members []*route          // the same, in the order the pools first list them
	policy  Policy
	bound   time.Duration // the in-flight bound
	// remember is, for each router of a pool with "session" affinity,
	// those pools: they remember where sessions went (see Remember).
	remember map[string][]*pool
	// readsInFlight says a pool's calls are chosen by the fleet's calls
	// in flight (Pool.ReadsInFlight).
	readsInFlight bool
}

// cur returns the configuration in force.
func (b *Broker) cur() *table { return b.tab.Load() }

// shared returns the store, or nil in local mode.
func (b *Broker) shared() Store {
	if r := b.store.Load(); r != nil {
		return r.Store
	}
	return nil
}

// New validates cfg and returns a Broker with every router enabled.
func New(cfg Config) (*Broker, error) {
	policy, bound, err := validate(cfg.Pools, cfg.Policy, cfg.InFlightBound)
	if err != nil {
		return nil, err
	}
	maxCall := cmp.Or(cfg.MaxCallTokens, DefaultMaxCallTokens)
	if !MaxCallTokensRange.Contains(maxCall) {
		return nil, fmt.Errorf("max call tokens %d: must be %v", maxCall, MaxCallTokensRange)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b := &Broker{
		hold:          cmp.Or(cfg.AnnouncementHold, DefaultAnnouncementHold),
		fleet:         fleet{peers: map[string]peer{}, told: map[string]inFlight{}, nudged: make(chan struct{}, 1)},
		quiet:         quiet{stirred: make(chan struct{}, 1)},
		every:         map[string]*route{},
		spends:        map[string]*poolBudget{},
		id:            cfg.ID,
		log:           log,
		debug:         log.Enabled(context.Background(), slog.LevelDebug),
		unknown:       map[string]bool{},
		writeContext:  ctx,
		stopWrites:    cancel,
		transitions:   map[transition]uint64{},
		maxCallTokens: maxCall,
	}
	b.memory.init()
	if cfg.Store != nil {
		b.store.Store(&storeRef{cfg.Store})
	}
	b.tab.Store(b.build(cfg.Pools, policy, bound, nil, time.Now()))
	return b, nil
}

// Members returns every router of every pool, each once, in the order the
// pools first list them. A router's index here is the id Choose returns.
//
// After Reconfigure it returns every router that was ever a member, by
// id: a router removed keeps its id, and one added gets the next.
func (b *Broker) Members() []string {
	return slices.Clone(*b.names.Load())
}

// Attach starts sharing router health through s, for a replica that began
// without one (the server had no JetStream). From now on changes are
// written to s, and the disables this replica holds are carried over
// where s has no live record of its own.
func (b *Broker) Attach(s Store) {
	b.store.Store(&storeRef{s})
	b.mu.Lock()
	var carry []*route
	for _, rt := range b.cur().members {
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

// Report applies how a call to router went: the status the client got and,
// for a 429 or 503, how long the upstream asked to be left alone
// (Retry-After; 0 without). A failure may take the router out of its
// pools, on this replica at once and on the others through the store; any
// write happens in the background. Reports of paths no pool has (the
// ingress itself, a router called directly) are only counted.
func (b *Broker) Report(router []byte, status int, retryAfter time.Duration) {
	// Indexing with string(router) in the index expression itself does not
	// allocate.
	t := b.cur()
	rt := t.routers[string(router)]
	failed := t.policy.FailureCodes.Has(status)
	if !failed {
		b.calls[Succeeded].Add(1)
		if rt != nil {
			b.counted(rt, false, time.Now(), status, 0)
			if !rt.clean.Load() {
				b.report(rt, event{kind: success, status: status})
			}
		}
		return
	}
	b.calls[Failed].Add(1)
	b.failureReports.add(rt, status)
	if rt != nil {
		failures, rate := b.counted(rt, true, time.Now(), status, retryAfter)
		b.report(rt, event{kind: failure, status: status, retryAfter: retryAfter, failures: failures, rate: rate})
	}
}

// Routers returns the enabled routers of the pool for ingress, best tier
// first: a request goes to one of the first tier's, unless none of them
// may take it.
func (b *Broker) Routers(ingress string) []string {
	if p := b.cur().pools[ingress]; p != nil {
		var out []string
		for _, t := range p.live.Load().tiers {
			for _, rt := range t.routes {
				out = append(out, rt.path)
			}
		}
		return out
	}
	return nil
}

// Phase returns router's phase in this replica's view.
func (b *Broker) Phase(router string) Phase {
	rt := b.cur().routers[router]
	if rt == nil {
		return Enabled
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return phase(rt.live, time.Now())
}

// Reload reads every router's latest change from the store and applies
// it, for a replica that may have missed changes: after a reconnect, its
// watcher may be gone with the server it lived on, and a new one cannot be
// made while a cluster elects a leader, but reading a key can. It returns
// the first error; the routers it could read are applied.
func (b *Broker) Reload(ctx context.Context) error {
	return b.reload(ctx, b.cur().members)
}

// reload reads routes' latest changes from the store and applies them.
func (b *Broker) reload(ctx context.Context, routes []*route) error {
	store := b.shared()
	if store == nil {
		return nil
	}
	var first error
	for _, rt := range routes {
		e, live, err := store.Latest(ctx, rt.path)
		if err != nil {
			first = cmp.Or(first, err)
			continue
		}
		if e.Revision != 0 { // else it never had a record
			b.observe(Word(rt.path, e, live), false)
		}
	}
	return first
}

// Until returns when router's disable ends in this replica's view: the
// zero time when it is enabled, or disabled until someone enables it.
func (b *Broker) Until(router string) time.Time {
	rt := b.cur().routers[router]
	if rt == nil {
		return time.Time{}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if rt.live == nil {
		return time.Time{}
	}
	return rt.live.Until
}

// Failures returns how many consecutive failures of router the fleet has
// reported, as this replica last heard from every replica, towards the
// threshold.
func (b *Broker) Failures(router string) int {
	rt := b.cur().routers[router]
	if rt == nil {
		return 0
	}
	return b.consecutive(rt)
}

// Close stops the broker: it takes no more reports or changes, waits for
// writes on their way to the store until ctx ends, then abandons them, and
// stops its timer. It returns when none of its goroutines runs. Choose
// still answers from the last view, and the calls that change it do
// nothing.
func (b *Broker) Close(ctx context.Context) {
	b.mu.Lock()
	b.closed = true
	b.disarm()
	b.mu.Unlock()
	done := make(chan struct{})
	go func() { b.writes.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		b.stopWrites()
		<-done
	}
	b.stopWrites()
	b.ticks.Wait()
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
