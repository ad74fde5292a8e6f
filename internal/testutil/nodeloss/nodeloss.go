// Package nodeloss measures what losing one node of a three-node NATS
// cluster costs a fleet of three broker replicas: how long until every
// replica agrees on a disable reported around the loss, how long until the
// replicas that were connected to the lost node answer again, and whether
// any disable is lost. The nodes are nats-server processes killed with
// SIGKILL, so that nothing is handed over as a graceful shutdown would.
// The tests run it once per kind of node lost; the bench many times.
package nodeloss

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/replica"
)

// Victim is the kind of node lost.
type Victim string

// The kinds of node lost. A meta leader or a stream leader is lost alone:
// the bucket's stream leader is moved off the meta leader first.
const (
	MetaLeader   Victim = "meta leader"
	StreamLeader Victim = "stream leader"
	Neither      Victim = "neither leader" // preferably one holding watchers
)

// Options say what to run.
type Options struct {
	Server string // the nats-server binary
	Victim Victim
	// InFlight keeps failure reports coming, one every 10 ms for 200 ms,
	// while the node dies 100 ms into them; without it one report follows
	// the loss.
	InFlight     bool
	DisabledTime time.Duration
	// Logger receives the replicas' logs (nil: discarded).
	Logger func(id string) *slog.Logger
}

// Result is one run.
type Result struct {
	Lost  string // the node lost, and what it held
	Roles string
	// Agreement is, for each disable reported, the time from sending the
	// report to every replica avoiding the router.
	Agreement []time.Duration
	// Answering is, for each replica connected to the lost node, the time
	// from the loss to its first answer elsewhere.
	Answering []time.Duration
	// Reported counts the reports a replica answered; Unanswered those
	// nobody did (sent while the replicas moved, as gecholog's own would
	// time out).
	Reported, Unanswered int
	// NotAgreed counts reported disables some replica did not take within
	// 5 s: lost to the election.
	NotAgreed int
	// NotLanded counts reported disables not in the bucket 30 s after the
	// loss while they still lasted (checked only when DisabledTime is over
	// 30 s).
	NotLanded int
}

const (
	bucket  = replica.DefaultBucket
	subject = replica.DefaultSubject
	pool    = "/p/"
	routers = 40
)

func router(i int) string { return fmt.Sprintf("/p/r%d/", i) }

// Run runs one node loss.
func Run(ctx context.Context, o Options) (res Result, err error) {
	c, err := startCluster(ctx, o.Server, 3)
	if err != nil {
		return res, fmt.Errorf("start cluster: %w", err)
	}
	defer c.close()
	defer func() {
		if err != nil {
			err = fmt.Errorf("%w\n%s", err, c.logs())
		}
	}()
	p := broker.Pool{Ingress: pool}
	for i := range routers {
		p.Routers = append(p.Routers, broker.Router{Path: router(i), Weight: 1})
	}
	fleet, err := replica.StartFleet(ctx, replica.Config{
		NATS: natsconn.Settings{Servers: c.urls()}, KVReplicas: 3, Pools: []broker.Pool{p},
		Policy: broker.Policy{DisabledTime: o.DisabledTime},
	}, 3, o.Logger)
	if err != nil {
		return res, fmt.Errorf("start replicas: %w", err)
	}
	defer fleet.Stop()
	admin, err := nats.Connect(c.urls())
	if err != nil {
		return res, err
	}
	defer admin.Close()
	js, err := jetstream.New(admin)
	if err != nil {
		return res, err
	}
	// A disable before the loss, which must survive it; sent once the
	// replicas' subscriptions have reached the node admin is on.
	if err := waitInterest(admin); err != nil {
		return res, err
	}
	if err := report(admin, router(0)); err != nil {
		return res, fmt.Errorf("report before the loss: %w", err)
	}
	if err := waitFor(readyWithin, func() bool { return everyReplica(fleet, router(0)) && landed(ctx, js, router(0)) }); err != nil {
		return res, fmt.Errorf("the first disable: %w", err)
	}
	victim, roles, err := pick(ctx, c, admin, js, o.Victim)
	if err != nil {
		return res, err
	}
	res.Lost, res.Roles = victim.name, roles
	var survivor *node
	for _, nd := range c.nodes {
		if nd != victim {
			survivor = nd
			break
		}
	}
	// The gateway's connection, on a node that stays.
	gw, err := nats.Connect(survivor.url)
	if err != nil {
		return res, err
	}
	defer gw.Close()
	if err := waitInterest(gw); err != nil {
		return res, err
	}
	var moved []*replica.Replica // connected to the victim
	for _, r := range fleet.Replicas {
		if r.Server() == victim.url {
			moved = append(moved, r)
		}
	}
	load := startLoad(gw, 8)
	defer load.stop()

	watch := watchAgreement(fleet)
	answered := make(chan []time.Duration, 1)
	var killed time.Time
	kill := func() {
		victim.kill()
		killed = time.Now()
		go func() { answered <- answering(moved, victim.url, killed) }()
	}
	if o.InFlight {
		for i := 1; i <= 20; i++ {
			if i == 11 {
				kill()
			}
			watch.report(gw, router(i))
			time.Sleep(10 * time.Millisecond) // the reports' pace, not a wait for anything
		}
	} else {
		kill()
		watch.report(gw, router(1))
	}
	res.Answering = <-answered
	sent := watch.wait()
	for _, s := range sent {
		switch {
		case s.err != nil:
			res.Unanswered++
		case s.agreed.IsZero():
			res.Reported++
			res.NotAgreed++
		default:
			res.Reported++
			res.Agreement = append(res.Agreement, s.agreed.Sub(s.at))
		}
	}
	if !everyReplica(fleet, router(0)) {
		return res, errors.New("the disable made before the loss was lost")
	}
	if o.DisabledTime > 30*time.Second {
		deadline := killed.Add(30 * time.Second)
		for _, s := range sent {
			if s.err == nil && waitFor(time.Until(deadline), func() bool { return landed(ctx, js, s.router) }) != nil {
				res.NotLanded++
			}
		}
	}
	return res, nil
}

// sentReport is one failure report and when every replica took it.
type sentReport struct {
	router string
	at     time.Time
	err    error     // the report was not answered
	agreed time.Time // zero: not yet
}

// agreement watches, from its own goroutine, when every replica avoids
// each reported router, so that the time is taken when it happens.
type agreement struct {
	fleet *replica.Fleet
	mu    sync.Mutex
	sent  []*sentReport
	done  chan struct{}
	quit  chan struct{}
}

func watchAgreement(f *replica.Fleet) *agreement {
	a := &agreement{fleet: f, done: make(chan struct{}), quit: make(chan struct{})}
	go func() {
		defer close(a.done)
		for {
			select {
			case <-a.quit:
				return
			case <-time.After(200 * time.Microsecond):
			}
			a.mu.Lock()
			for _, s := range a.sent {
				if s.err == nil && s.agreed.IsZero() && everyReplica(f, s.router) {
					s.agreed = time.Now()
				}
			}
			a.mu.Unlock()
		}
	}()
	return a
}

// report sends a failure of router as gecholog's response processor does,
// and watches for every replica to take it.
func (a *agreement) report(nc *nats.Conn, router string) {
	s := &sentReport{router: router, at: time.Now()}
	a.mu.Lock()
	a.sent = append(a.sent, s)
	a.mu.Unlock()
	if err := report(nc, router); err != nil {
		a.mu.Lock()
		s.err = err
		a.mu.Unlock()
	}
}

// wait waits until every answered report is agreed on, or 5 s after the
// last was sent, and returns them.
func (a *agreement) wait() []sentReport {
	a.mu.Lock()
	last := a.sent[len(a.sent)-1].at
	a.mu.Unlock()
	_ = waitFor(time.Until(last.Add(5*time.Second)), func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		for _, s := range a.sent {
			if s.err == nil && s.agreed.IsZero() {
				return false
			}
		}
		return true
	})
	close(a.quit)
	<-a.done
	var out []sentReport
	for _, s := range a.sent {
		out = append(out, *s)
	}
	return out
}

// waitInterest waits until the replicas' subscriptions have reached the
// node nc is on: a replica serves once its own node has its subscription,
// and the routes carry it to the others a moment later.
func waitInterest(nc *nats.Conn) error {
	if err := waitFor(readyWithin, func() bool {
		_, err := nc.Request(subject, []byte(`{"gl_path":"/not/an/ingress/"}`), time.Second)
		return err == nil
	}); err != nil {
		return fmt.Errorf("the replicas' subscriptions reach %s: %w", natsconn.Redact(nc.ConnectedUrl()), err)
	}
	return nil
}

// report sends a failure of router as gecholog's response processor does.
func report(nc *nats.Conn, router string) error {
	_, err := nc.Request(subject, fmt.Appendf(nil, `{"gl_path":%q,"egress_status_code":502}`, router), time.Second)
	return err
}

// everyReplica reports whether every replica avoids router.
func everyReplica(f *replica.Fleet, router string) bool {
	for _, r := range f.Replicas {
		if slices.Contains(r.Broker().Routers(pool), router) {
			return false
		}
	}
	return true
}

// answering waits up to 5 s for each replica that was on the lost node to
// answer a call through another node, and says how long after the loss
// each first did. A call it handled before it reconnected does not count:
// its answer went nowhere.
func answering(moved []*replica.Replica, victim string, killed time.Time) []time.Duration {
	var out []time.Duration
	for _, r := range moved {
		var base uint64
		back := false
		for deadline := killed.Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Microsecond) {
			n := r.Broker().Stats().Calls[broker.Chosen]
			if s := r.Server(); !back && s != "" && s != victim {
				back, base = true, n
				continue
			}
			if back && n > base {
				out = append(out, time.Since(killed))
				break
			}
		}
	}
	return out
}

// landed reports whether router has a live record in the bucket.
func landed(ctx context.Context, js jetstream.JetStream, router string) bool {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		return false
	}
	_, err = kv.Get(ctx, router)
	return err == nil
}

// waitFor polls cond until it holds, or fails after d.
func waitFor(d time.Duration, cond func() bool) error {
	for deadline := time.Now().Add(d); ; time.Sleep(5 * time.Millisecond) {
		if cond() {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %v", d)
		}
	}
}

// pick chooses the node to lose and says what each node holds.
func pick(ctx context.Context, c *cluster, admin *nats.Conn, js jetstream.JetStream, v Victim) (*node, string, error) {
	streamLeader := func() string {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		s, err := js.Stream(sctx, "KV_"+bucket)
		if err != nil {
			return ""
		}
		info, err := s.Info(sctx)
		if err != nil || info.Cluster == nil {
			return ""
		}
		return info.Cluster.Leader
	}
	meta := c.nodes[0].metaLeader()
	stream := streamLeader()
	// Lose one leader alone: move the stream's off the meta leader.
	for attempt := 0; (v == MetaLeader || v == StreamLeader) && stream == meta && attempt < 10; attempt++ {
		if _, err := admin.Request("$JS.API.STREAM.LEADER.STEPDOWN.KV_"+bucket, nil, 2*time.Second); err != nil {
			return nil, "", fmt.Errorf("stream leader step-down: %w", err)
		}
		_ = waitFor(readyWithin, func() bool { s := streamLeader(); return s != "" && s != stream })
		meta, stream = c.nodes[0].metaLeader(), streamLeader()
	}
	if meta == "" || stream == "" || ((v == MetaLeader || v == StreamLeader) && meta == stream) {
		return nil, "", fmt.Errorf("leaders: meta %q, stream %q", meta, stream)
	}
	watchers := map[string]int{} // node → watchers' consumers it leads
	if s, err := js.Stream(ctx, "KV_"+bucket); err == nil {
		for ci := range s.ListConsumers(ctx).Info() {
			if ci.Cluster != nil {
				watchers[ci.Cluster.Leader]++
			}
		}
	}
	var victim *node
	switch v {
	case MetaLeader:
		victim = c.byName(meta)
	case StreamLeader:
		victim = c.byName(stream)
	default:
		for _, nd := range c.nodes {
			if nd.name != meta && nd.name != stream && (victim == nil || watchers[nd.name] > watchers[victim.name]) {
				victim = nd
			}
		}
	}
	if victim == nil {
		return nil, "", fmt.Errorf("no %s to lose (meta %s, stream %s)", v, meta, stream)
	}
	return victim, fmt.Sprintf("meta leader %s, stream leader %s, watchers' consumers %v", meta, stream, watchers), nil
}

// load is callers making request contexts back to back on the gateway's
// connection, so that every replica gets calls.
type load struct {
	halt chan struct{}
	wg   sync.WaitGroup
	n    atomic.Int64
}

func startLoad(nc *nats.Conn, callers int) *load {
	l := &load{halt: make(chan struct{})}
	for range callers {
		l.wg.Go(func() {
			for range 1_000_000 {
				select {
				case <-l.halt:
					return
				default:
				}
				// gecholog's processor timeout: a call in flight on the lost
				// node holds its caller no longer.
				_, _ = nc.Request(subject, []byte(`{"gl_path":"/p/"}`), 50*time.Millisecond)
				l.n.Add(1)
			}
		})
	}
	return l
}

func (l *load) stop() {
	select {
	case <-l.halt:
	default:
		close(l.halt)
	}
	l.wg.Wait()
}
