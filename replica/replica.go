// Package replica runs one broker replica: it connects to NATS, opens the
// shared router health bucket (or serves in local mode without JetStream,
// and attaches later), answers gecholog's processor calls on the queue
// group, serves metrics and health, and stops in order. The broker
// command, the demo, the benchmarks and the tests all start replicas
// through Run.
package replica

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/gecholog"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/kv"
)

// The defaults of Config, each defined here once: withDefaults puts them
// in place of zero fields, and the broker command's flags and -h show
// them. The failure policy's are broker's (broker.DefaultThreshold, ...).
const (
	DefaultSubject = "coburn.gl.broker" // the original broker's, and gecholog's seed config's
	DefaultQueue   = "broker"
	DefaultBucket  = "gl_broker"
	// DefaultKVReplicas is the bucket's replicas when a replica creates it:
	// one, as one nats-server has; 3 on a cluster.
	DefaultKVReplicas = 1
	// DefaultLoggerSubject is gecholog's seed service_bus.topic_exact_logger,
	// where it publishes every finished call.
	DefaultLoggerSubject = "coburn.gl.logger"
	// DefaultReattach is how often a replica in local mode looks for
	// JetStream again.
	DefaultReattach = 5 * time.Second
	// DefaultDrainTimeout is how long a stopping replica waits for the
	// calls it holds.
	DefaultDrainTimeout = 10 * time.Second
	// DefaultWriteDrainTimeout is how long a stopping replica then waits
	// for the bucket writes those calls started.
	DefaultWriteDrainTimeout = 5 * time.Second
)

// KVReplicasRange is the bucket replicas a replica accepts: JetStream
// keeps at most 5 copies of a stream.
var KVReplicasRange = broker.Range[int]{Min: 1, Max: 5}

// DrainTimeoutRange is the drain timeouts the broker command accepts: at
// least a second, so that a drain can answer something, and at most ten
// minutes, longer than any orchestrator's grace period is set to wait
// (Kubernetes' terminationGracePeriodSeconds defaults to 30 s).
var DrainTimeoutRange = broker.Range[time.Duration]{Min: time.Second, Max: 10 * time.Minute}

// BucketDescription is what `nats kv info` says of a bucket the broker
// creates.
const BucketDescription = "gecholog broker: disabled routers, one key per router path"

// NewsSubject is the plain NATS subject on which the replicas (and the
// operator's tools) tell each other of every change to bucket as they make
// it, so that a change reaches every replica while the cluster elects a
// JetStream leader (see kv.Config.News): `nats sub broker.news.gl_broker`
// shows them.
func NewsSubject(bucket string) string { return "broker.news." + bucket }

// Replica is a running replica, as Config.Ready sees it.
type Replica struct {
	cfg      Config
	log      *slog.Logger
	stage    progress       // how far Run has come; /readyz reports it
	mon      *monitor       // nil: no listener
	embedded *server.Server // nil: none
	budgets  *budgetStore   // the bucket of budget counts; keepBudgets' alone after start
	nc       *nats.Conn
	link     link                        // the connection's state for the endpoints
	bucket   atomic.Pointer[bucketState] // what keepReach last found of the bucket
	broker   *broker.Broker
	handler  *gecholog.Handler
	sub      *nats.Subscription
	closed   <-chan nats.SubStatus
	calls    gate
	tx       txLog   // gecholog's transaction log
	digests  digests // what it read of the log, for the others
	words    words   // its counts, told and relayed
	drops    drops   // slow-consumer lines

	// ctx owns every goroutine the replica starts, each through spawn:
	// stop cancels it and waits for the group.
	ctx    context.Context
	cancel context.CancelFunc
	group  sync.WaitGroup

	mu      sync.Mutex
	stopped bool      // stop has begun: spawn starts nothing more
	store   *kv.Store // set by attach, in Run or in the re-attach goroutine
	mode    string    // "ttl", "expiry" or "local"
	conf    fleetConfig

	heardRevs heardRevisions // the other replicas' configuration, as told
}

// Broker is the replica's decision core.
func (r *Replica) Broker() *broker.Broker { return r.broker }

// ID is the replica's name.
func (r *Replica) ID() string { return r.cfg.ID }

// Server is the URL of the NATS server the replica is connected to, without
// credentials; "" while it is not connected.
func (r *Replica) Server() string { return natsconn.Redact(r.nc.ConnectedUrl()) }

// Mode is how router health is kept: "ttl" or "expiry" (the bucket's
// mode) or "local" (no JetStream yet).
func (r *Replica) Mode() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.mode
}

// setMode records how router health is kept, for Mode and the listener.
func (r *Replica) setMode(mode string) {
	r.mu.Lock()
	r.mode = mode
	r.mu.Unlock()
	r.mon.attached(mode)
}

// Run runs one replica until ctx ends, then stops taking calls, finishes
// those in flight and the bucket writes they started, and returns nil. It
// returns an error when the replica cannot start: a bad setting, a refused
// subscription, a missing JetStream with RequireKV. While the server is
// unreachable it keeps trying, and a ctx that ends meanwhile is a clean
// stop.
func Run(ctx context.Context, cfg Config) error {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	r := &Replica{cfg: cfg, log: cfg.Logger}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	defer r.stop()
	// The replica's own context outlives ctx, through the drain; until the
	// replica serves, ctx ending also ends what start waits for (the
	// bucket, the view).
	starting := context.AfterFunc(ctx, r.cancel)
	err = r.start(ctx)
	starting()
	if err != nil || ctx.Err() != nil {
		return err
	}
	// The line comes before /readyz turns ready, so that whoever sees the
	// replica ready finds the line that says where it serves.
	r.log.Info("serving",
		slog.String("subject", cfg.Subject), slog.String("queue", cfg.Queue),
		slog.String("bucket", cfg.Bucket), slog.String("ttl_mode", r.Mode()),
		slog.Int("pools", len(cfg.Pools)), slog.String("disabled_time", cfg.Policy.DisabledTime.String()),
		slog.String("id", cfg.ID), slog.String("server", natsconn.Redact(r.nc.ConnectedUrl())))
	r.stage.advance(ready)
	if cfg.Ready != nil {
		cfg.Ready(r)
	}
	<-ctx.Done()
	return nil
}

// start takes the replica through its stages up to answering calls: the
// listener, the embedded server, the connection, the broker and its
// statistics, the bucket, the subscription. An error, or a nil error with
// ctx ended, ends Run, and stop undoes whatever part was done.
func (r *Replica) start(ctx context.Context) error {
	c := r.cfg
	if c.MetricsAddr != "" {
		// Listening before connecting lets /healthz answer, and /readyz
		// say why not, while the replica waits for the server.
		mon := newMonitor(c.ID, &r.stage, r.log)
		mon.configured(r.Config, r.Revisions)
		if err := mon.listen(c.MetricsAddr, c.HTTPIdleTimeout, c.HTTPMaxConns); err != nil {
			return err
		}
		r.mon = mon
	}
	if c.Embedded != nil {
		s, err := StartEmbedded(*c.Embedded, c.NATS.Token, r.log)
		if err != nil {
			return err
		}
		r.embedded = s
		r.cfg.NATS.Servers = s.ClientURL()
	}
	opts, err := r.natsOptions()
	if err != nil {
		return err
	}
	if r.nc = connect(ctx, r.cfg.NATS, opts, r.log); r.nc == nil {
		return nil // ctx ended while waiting for the server: a clean stop
	}
	r.link.set(r.nc)
	r.mon.connected(&r.link)
	r.stage.advance(openingStore)

	// The fleet's configuration, when the replica follows it, decides the
	// pools, the policy and the bound it starts with (see fleetconfig.go).
	cs := r.fleetConfig(ctx)
	c = r.cfg
	r.broker, err = broker.New(broker.Config{Pools: c.Pools, Policy: c.Policy, ID: c.ID, Logger: r.log, InFlightBound: c.InFlightBound,
		MaxCallTokens: c.MaxCallTokens})
	if err != nil {
		return err
	}
	if c.Policy.NeverDisable {
		r.log.Warn("DISABLED_TIME is 0: a failure never takes a router out, as in the original broker; calls are still spread and the failures counted; set DISABLED_TIME above 0 to fail over")
	}
	r.handler = gecholog.NewHandler(r.broker, r.log, gecholog.SessionHeader(c.SessionHeader))
	r.mon.started(r.broker, r.handler, r.Transactions)
	if cs != nil {
		r.watchConfig(cs)
	}
	r.digests.init(c.ID)
	if err := r.shareStats(); err != nil {
		return fmt.Errorf("subscribe to %q: %w", StatsSubject(c.Bucket), err)
	}
	// The budgets' counts before the log: a call is then counted once.
	r.loadBudgets(ctx)
	r.spawn(r.keepBudgets)
	if err := r.hearTransactions(); err != nil {
		return fmt.Errorf("subscribe to %q: %w", c.LoggerSubject, err)
	}

	// The view is complete before the first call is answered.
	switch err := r.attach(r.ctx, true); {
	case errors.Is(err, kv.ErrNoJetStream) && c.RequireKV:
		return fmt.Errorf("require-kv: JetStream is not enabled on the NATS server %s; %s", natsconn.Redact(r.nc.ConnectedUrl()), gecholog.EnableJetStream)
	case errors.Is(err, kv.ErrNoJetStream):
		r.log.Warn("JetStream is not enabled on the NATS server: serving in local mode, where each replica keeps its own disables as the original broker did, and trying again every "+c.Reattach.String()+"; to share them, "+gecholog.EnableJetStream,
			slog.String("server", natsconn.Redact(r.nc.ConnectedUrl())))
		r.setMode("local")
		r.spawn(r.reattach)
	case ctx.Err() != nil:
		return nil
	case err != nil:
		return err
	}
	if store, _, st, _ := r.lookAtBucket(); store != nil {
		r.showBucket(st) // so that /metrics says from the first call on
	}
	r.spawn(r.keepReach)
	r.stage.advance(subscribing)
	return r.subscribe()
}

// subscribe joins the queue group. A refusal by the server's permissions
// ends startup with one line naming the permission.
func (r *Replica) subscribe() error {
	c := r.cfg
	sub, err := r.nc.QueueSubscribe(c.Subject, c.Queue, r.mon.timed(func(m *nats.Msg) {
		var reply []byte
		if r.calls.enter() {
			reply = r.handler.Handle(m.Data)
			r.calls.leave()
		}
		if m.Reply != "" {
			_ = m.Respond(reply) // fails only when the connection is closed
		}
	}))
	if err != nil {
		return fmt.Errorf("subscribe to %q: %w", c.Subject, err)
	}
	r.sub = sub
	// A burst waits in this queue while the handler catches up. gecholog
	// gives up after its processor timeout (50 ms), so a deep queue only
	// answers calls in vain, yet a burst of 50,000 calls (the fault tests')
	// must not be dropped: 64 Ki calls hold it with room to spare, about
	// 16 MB of overhead plus at most 32 MiB of payload. nats.go's defaults
	// (500,000 calls) let a stalled replica queue ~125 MB, seconds of work.
	// Beyond the limit the newest calls are dropped with one slow-consumer
	// error, and gecholog keeps those calls on the ingress router.
	if err := sub.SetPendingLimits(1<<16, 32<<20); err != nil {
		return fmt.Errorf("subscribe to %q: %w", c.Subject, err)
	}
	r.closed = sub.StatusChanged(nats.SubscriptionClosed)
	if err := r.nc.Flush(); err != nil {
		return fmt.Errorf("subscribe to %q: %w", c.Subject, err)
	}
	// The server refuses a subscription asynchronously; after the flush's
	// round trip the refusal has arrived if there was one.
	if err := r.nc.LastError(); errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), strconv.Quote(c.Subject)) {
		return fmt.Errorf("subscribe to %q in queue group %q: %w: allow the broker's NATS user to subscribe to %q", c.Subject, c.Queue, err, c.Subject+" "+c.Queue)
	}
	return nil
}

// spawn runs f in a goroutine of the replica's group: stop cancels f's
// ctx and waits for f to return. Once stop has begun it starts nothing
// and returns false. Run's own calls come before its stop, so only work
// started from another goroutine (a reconnect, the re-attach) can be
// refused.
func (r *Replica) spawn(f func(ctx context.Context)) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped {
		return false
	}
	r.group.Go(func() { f(r.ctx) })
	return true
}

// stop takes the replica down in the order the data flows. This is the
// one place that order is written, and each step copes with a start that
// got only part of the way:
//
//  1. Stop taking calls: /readyz says stopping, and the subscription
//     drains, so the server sends it no more.
//  2. Drain: the calls it holds are answered, for at most DrainTimeout;
//     then no handler enters the broker.
//  3. Stop the background: the group (the statistics, the transaction
//     log's reader, the re-attach, the bucket watcher, the reloads after
//     a reconnect) is cancelled and waited for, so nothing changes the
//     view any more.
//  4. Close the store: the bucket writes those calls started are
//     finished, or abandoned after WriteDrainTimeout, then the store's
//     janitor stops.
//  5. Close the connection, once the replies on their way are flushed.
//  6. Shut the embedded server down, and last the listener, so that
//     /healthz and /readyz answer until the end.
//
// Every goroutine the replica started has ended when it returns.
func (r *Replica) stop() {
	// 1. Stop taking calls, and 2. drain.
	was := r.stage.advance(stopping)
	if r.sub != nil {
		// The calls dropped since the last line; a drained subscription
		// no longer says.
		r.drops.tell(r.log, r.sub, true)
		switch {
		case was != ready:
			_ = r.sub.Unsubscribe()
		case !r.nc.IsConnected():
			// Draining needs the server; without a connection no call can
			// be in flight, so do not wait for one.
			r.log.Info("stopping: finishing calls in flight")
			_ = r.sub.Unsubscribe()
		default:
			r.log.Info("stopping: finishing calls in flight")
			if r.sub.Drain() != nil {
				break
			}
			select {
			case <-r.closed:
			case <-time.After(r.cfg.DrainTimeout):
				r.log.Warn("calls still in flight after " + r.cfg.DrainTimeout.String() + "; stopping anyway")
				_ = r.sub.Unsubscribe()
			}
		}
	}
	r.calls.close() // a handler still running finishes; no other starts

	// 3. Stop the background.
	r.mu.Lock()
	r.stopped = true
	r.mu.Unlock()
	r.cancel()
	r.group.Wait()

	// 4. Close the store; nothing sets it any more.
	if r.broker != nil {
		ctx, cancel := context.WithTimeout(context.Background(), r.cfg.WriteDrainTimeout)
		r.broker.Close(ctx)
		cancel()
	}
	if r.store != nil {
		r.store.Close()
	}

	// 5. Close the connection.
	if r.nc != nil {
		if r.nc.IsConnected() {
			_ = r.nc.FlushTimeout(time.Second) // replies on their way; without a server there are none
		}
		r.nc.Close()
	}
	if r.broker != nil {
		r.log.Info("stopped")
	}

	// 6. The embedded server, then the listener.
	if r.embedded != nil {
		r.embedded.Shutdown()
		r.embedded.WaitForShutdown()
	}
	r.mon.close()
}

// gate lets calls into the broker until it closes; close waits for a call
// inside to leave.
type gate struct {
	mu     sync.RWMutex
	closed bool
}

func (g *gate) enter() bool {
	g.mu.RLock()
	if g.closed {
		g.mu.RUnlock()
		return false
	}
	return true
}

func (g *gate) leave() { g.mu.RUnlock() }

func (g *gate) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
}
