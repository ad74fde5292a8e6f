package main

// broker bench: load and timing measurements of the broker on loopback,
// with the replicas in this process, each a full serve() with its own NATS
// connection, as in the demo and the end-to-end tests.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/kv"
)

// benchOptions are the bench command's settings.
type benchOptions struct {
	mode     string
	server   string // "" starts an embedded server
	token    string
	duration time.Duration // 0: the mode's default
	warmup   time.Duration
	callers  int
	conns    int
	replicas int
	timeout  time.Duration
	maxCalls int
	rounds   int
	trials   int
	reports  int
	pools    int
	routers  int
	starts   int
	rate     int
	fail     float64
	disable  time.Duration
	logLevel string
	cpuProf  string
	memProf  string
}

// modeDuration is the measuring time a mode runs for by default; ok is
// false for a mode that does not exist.
func modeDuration(mode string) (d time.Duration, ok bool) {
	switch mode {
	case "throughput":
		return 10 * time.Second, true
	case "storm":
		return 5 * time.Second, true
	case "soak":
		return time.Minute, true
	case "propagation", "scale":
		return 0, true // counted in trials and starts, not time
	}
	return 0, false
}

func parseBench(args []string, getenv func(string) string, stdout io.Writer) (benchOptions, error) {
	var o benchOptions
	s := newSettings("bench", getenv)
	s.string(&o.mode, "mode", "", "throughput", "`mode`: throughput, propagation, storm, scale or soak")
	s.string(&o.server, "server", "", "", "NATS server `URL` on loopback; default: an embedded nats-server with JetStream on a random 127.0.0.1 port")
	s.string(&o.token, "token", "NATS_TOKEN", "", "NATS `token` for -server")
	s.duration(&o.duration, "duration", "", 0, 0, time.Hour, "measuring `time` of each condition (default 10s throughput, 5s storm, 60s soak)")
	s.duration(&o.warmup, "warmup", "", time.Second, 0, time.Minute, "warm-up `time` before measuring")
	s.int(&o.callers, "callers", "", 32, 1, 1024, "concurrent `callers` (throughput, storm)")
	s.int(&o.conns, "conns", "", 4, 1, 64, "NATS `connections` the callers share")
	s.int(&o.replicas, "replicas", "", 3, 1, 16, "broker `replicas`, and no-op responders")
	s.duration(&o.timeout, "timeout", "", 50*time.Millisecond, time.Millisecond, time.Minute, "a call without a reply within this `time` is an error (gecholog's processor timeout is 50ms)")
	s.int(&o.maxCalls, "max-calls", "", 10_000_000, 1, 100_000_000, "at most this many `calls` per measured run")
	s.int(&o.rounds, "rounds", "", 10, 1, 1000, "throughput and storm: `runs` each condition's measuring time is split into, taken in turns")
	s.int(&o.trials, "trials", "", 1000, 1, 100_000, "propagation: `trials`, each with a router of its own")
	s.int(&o.reports, "reports", "", 10_000, 1, 1_000_000, "storm: failure `reports` per second")
	s.int(&o.pools, "pools", "", 100, 1, 10_000, "scale: `pools`")
	s.int(&o.routers, "routers", "", 1000, 1, 100_000, "scale: `routers` in all, each with a record in the bucket")
	s.int(&o.starts, "starts", "", 5, 1, 100, "scale: replica `starts` timed")
	s.int(&o.rate, "rate", "", 2000, 1, 1_000_000, "soak: gecholog `calls` per second, each a request and a response context")
	s.float(&o.fail, "fail", "", 0.3, 0, 1, "soak: `fraction` of the failing router's calls that fail")
	s.duration(&o.disable, "soak-disable", "", time.Second, time.Second, time.Hour, "soak: the disabled `time`, short so that routers cycle through disable, probe and enable")
	s.string(&o.logLevel, "log-level", "", "error", "replicas' log `level` on stderr: debug, info, warn or error")
	s.string(&o.cpuProf, "cpuprofile", "", "", "write a CPU profile of the whole run (server, replicas and callers) to `file`")
	s.string(&o.memProf, "memprofile", "", "", "write an allocation profile of the whole run to `file`")
	if err := s.parse(args, stdout); err != nil {
		return o, err
	}
	def, ok := modeDuration(o.mode)
	if !ok {
		return o, fmt.Errorf("mode %q: throughput, propagation, storm, scale or soak", o.mode)
	}
	if o.duration == 0 {
		o.duration = def
	}
	if _, err := logLevel(o.logLevel); err != nil {
		return o, err
	}
	if o.server != "" {
		if err := loopbackOnly(o.server); err != nil {
			return o, err
		}
	}
	if o.routers < o.pools {
		return o, fmt.Errorf("routers %d: give at least one router per pool (%d pools)", o.routers, o.pools)
	}
	return o, nil
}

// loopbackOnly refuses servers elsewhere: a load program has no business
// on anyone's network.
func loopbackOnly(servers string) error {
	for _, s := range strings.Split(servers, ",") {
		s = strings.TrimSpace(s)
		if !strings.Contains(s, "://") {
			s = "nats://" + s
		}
		u, err := url.Parse(s)
		if err != nil {
			return fmt.Errorf("server %q: %w", redact(s), err)
		}
		host := u.Hostname()
		if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return fmt.Errorf("server %q: the bench runs on loopback only (127.0.0.1, ::1 or localhost)", redact(s))
		}
	}
	return nil
}

// bench is one run of the bench command.
type bench struct {
	o       benchOptions
	url     string
	version string // the server's
	where   string
	subject string // the replicas'
	noop    string // the no-op responders'
	bucket  string
	out     io.Writer
	stderr  io.Writer
	level   slog.Level
}

func benchCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	o, err := parseBench(args, getenv, stdout)
	if err != nil {
		return err
	}
	level, _ := logLevel(o.logLevel) // checked in parseBench
	// A random token keeps runs against a shared -server apart.
	tok := strings.ToLower(nats.NewInbox()[len(nats.InboxPrefix):])
	b := &bench{o: o, out: stdout, stderr: stderr, level: level,
		subject: "bench." + tok + ".broker", noop: "bench." + tok + ".noop", bucket: "bench_" + tok}

	if o.server == "" {
		store, err := os.MkdirTemp("", "broker-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(store)
		srv, err := startEmbedded(config{embeddedListen: "127.0.0.1:0", embeddedStore: store, token: o.token},
			slog.New(slog.DiscardHandler))
		if err != nil {
			return err
		}
		defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
		b.url, b.version, b.where = srv.ClientURL(), server.VERSION, "embedded, "+srv.Addr().String()
	} else {
		b.url, b.where = o.server, redact(o.server)
	}
	nc, err := b.connect()
	if err != nil {
		return err
	}
	if b.version == "" {
		b.version = nc.ConnectedServerVersion()
	}
	nc.Close()
	if o.server != "" {
		defer b.deleteBucket()
	}

	fmt.Fprintf(stdout, "broker bench -mode %s: nats-server %s (%s), %s %s/%s, GOMAXPROCS %d\n\n",
		o.mode, b.version, b.where, runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.GOMAXPROCS(0))
	if o.cpuProf != "" {
		f, err := os.Create(o.cpuProf)
		if err != nil {
			return fmt.Errorf("cpuprofile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("cpuprofile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	if o.memProf != "" {
		defer func() {
			if err := writeHeapProfile(o.memProf); err != nil {
				fmt.Fprintln(stderr, "broker bench: memprofile:", err)
			}
		}()
	}
	switch o.mode {
	case "throughput":
		err = b.throughput(ctx)
	case "propagation":
		err = b.propagation(ctx)
	case "storm":
		err = b.storm(ctx)
	case "scale":
		err = b.scale(ctx)
	case "soak":
		err = b.soak(ctx)
	}
	if err == nil && ctx.Err() != nil {
		err = errors.New("bench interrupted")
	}
	return err
}

func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	runtime.GC()
	if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func (b *bench) connect() (*nats.Conn, error) {
	opts := []nats.Option{nats.Name("broker bench"), nats.MaxReconnects(-1)}
	if b.o.token != "" {
		opts = append(opts, nats.Token(b.o.token))
	}
	nc, err := nats.Connect(b.url, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", redact(b.url), err)
	}
	return nc, nil
}

// connectN opens n connections, closed by the function it returns.
func (b *bench) connectN(n int) ([]*nats.Conn, func(), error) {
	var conns []*nats.Conn
	closeAll := func() {
		for _, nc := range conns {
			nc.Close()
		}
	}
	for range n {
		nc, err := b.connect()
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		conns = append(conns, nc)
	}
	return conns, closeAll, nil
}

func (b *bench) deleteBucket() {
	nc, err := b.connect()
	if err != nil {
		return
	}
	defer nc.Close()
	if js, err := jetstream.New(nc); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = js.DeleteKeyValue(ctx, b.bucket)
	}
}

// replicaLog is a replica's log: stderr at -log-level.
func (b *bench) replicaLog(i int) *slog.Logger {
	return slog.New(slog.NewTextHandler(b.stderr, &slog.HandlerOptions{Level: b.level})).
		With(slog.String("replica", fmt.Sprintf("bench-%d", i+1)))
}

// benchFleet is broker replicas serving in this process.
type benchFleet struct {
	brokers []*broker.Broker
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	errs    chan error
}

// startReplicas runs n replicas on pools and returns once every one answers
// calls.
func (b *bench) startReplicas(ctx context.Context, n int, pools []broker.Pool, disabled time.Duration, log func(int) *slog.Logger) (*benchFleet, error) {
	rctx, cancel := context.WithCancel(ctx)
	f := &benchFleet{brokers: make([]*broker.Broker, n), cancel: cancel, errs: make(chan error, n)}
	type up struct {
		i int
		b *broker.Broker
	}
	ready := make(chan up, n)
	for i := range n {
		c := config{server: b.url, token: b.o.token, subject: b.subject, queue: "broker", bucket: b.bucket,
			kvReplicas: 1, disabledTime: disabled, pools: pools, id: fmt.Sprintf("bench-%d", i+1)}
		l := log(i)
		f.wg.Go(func() {
			if err := serve(rctx, c, l, func(br *broker.Broker) { ready <- up{i, br} }); err != nil {
				f.errs <- fmt.Errorf("replica %s: %w", c.id, err)
			}
		})
	}
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	for range n {
		select {
		case u := <-ready:
			f.brokers[u.i] = u.b
		case err := <-f.errs:
			f.stop()
			return nil, err
		case <-timeout.C:
			f.stop()
			return nil, errors.New("replicas not ready within 30s")
		case <-ctx.Done():
			f.stop()
			return nil, ctx.Err()
		}
	}
	return f, nil
}

// stop ends the replicas and waits for them to finish.
func (f *benchFleet) stop() error {
	f.cancel()
	f.wg.Wait()
	select {
	case err := <-f.errs:
		return err
	default:
		return nil
	}
}

func (f *benchFleet) kvWrites() uint64 {
	var n uint64
	for _, br := range f.brokers {
		n += br.Stats().KVWrites
	}
	return n
}

// startNoop runs n responders that answer every call empty at once: the
// floor the broker is measured against. Each has its own connection and
// queue subscription, as each replica has.
func (b *bench) startNoop(n int) (func(), error) {
	conns, closeAll, err := b.connectN(n)
	if err != nil {
		return nil, err
	}
	for _, nc := range conns {
		if _, err := nc.QueueSubscribe(b.noop, "noop", func(m *nats.Msg) { _ = m.Respond(nil) }); err != nil {
			closeAll()
			return nil, err
		}
		if err := nc.Flush(); err != nil {
			closeAll()
			return nil, err
		}
	}
	return closeAll, nil
}

// benchResult is what a measured run saw.
type benchResult struct {
	calls  int             // answered as expected
	errors int             // no reply in time, or a wrong one
	window time.Duration   // the measured time
	lat    []time.Duration // of every call, sorted
}

func (r benchResult) rate() float64 { return float64(r.calls) / r.window.Seconds() }

func (r benchResult) pct(q float64) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	return r.lat[min(int(q*float64(len(r.lat))), len(r.lat)-1)]
}

func (r *benchResult) merge(o benchResult) {
	r.calls += o.calls
	r.errors += o.errors
	r.window += o.window
	r.lat = append(r.lat, o.lat...)
}

// closedLoop runs b.o.callers callers, each making calls one after the
// other, spread over conns: for settle unmeasured, then for window. call
// makes one call and says whether it was answered as expected.
func (b *bench) closedLoop(ctx context.Context, conns []*nats.Conn, call func(*nats.Conn) error, settle, window time.Duration) benchResult {
	start := time.Now()
	from := start.Add(settle)
	end := from.Add(window)
	per := max(b.o.maxCalls/b.o.callers, 1)
	parts := make([]benchResult, b.o.callers)
	var wg sync.WaitGroup
	for i := range b.o.callers {
		nc := conns[i%len(conns)]
		r := &parts[i]
		wg.Go(func() {
			for n := 0; n < per && ctx.Err() == nil; {
				t0 := time.Now()
				if !t0.Before(end) {
					return
				}
				err := call(nc)
				d := time.Since(t0)
				if t0.Before(from) {
					continue
				}
				n++
				// A call that timed out counts in the latencies too, at the
				// time it was given up on, so it cannot flatter the tail.
				r.lat = append(r.lat, d)
				if err != nil {
					r.errors++
					continue
				}
				r.calls++
			}
		})
	}
	wg.Wait()
	var all benchResult
	for _, p := range parts {
		all.merge(p)
	}
	all.window = min(max(time.Since(from), 0), window)
	slices.Sort(all.lat)
	return all
}

// rounds splits the measured time into runs: each condition gets
// -duration in all, in -rounds runs, with a short settle before each.
func (b *bench) rounds() (run, settle time.Duration) {
	return max(b.o.duration/time.Duration(b.o.rounds), time.Millisecond), min(b.o.warmup, 100*time.Millisecond)
}

// spread summarises per-round ratios: min, median and max.
func spread(xs []float64) string {
	if len(xs) == 0 {
		return "none"
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return fmt.Sprintf("min %.3f, median %.3f, max %.3f", s[0], s[len(s)/2], s[len(s)-1])
}

var errWrongReply = errors.New("wrong reply")

// request sends a request context and checks the reply: empty for the
// no-op, a router of the pool for the broker.
func (b *bench) request(subject string, msg []byte, valid func([]byte) bool) func(*nats.Conn) error {
	return func(nc *nats.Conn) error {
		m, err := nc.Request(subject, msg, b.o.timeout)
		if err != nil {
			return err
		}
		if !valid(m.Data) {
			return errWrongReply
		}
		return nil
	}
}

func isDefaultRouter(data []byte) bool {
	return bytes.HasPrefix(data, []byte(`{"gl_path":"/azure/`)) && len(data) > len(`{"gl_path":"/azure/"}`)
}

func noReply(data []byte) bool { return len(data) == 0 }

// throughput compares three replicas with three no-op responders.
func (b *bench) throughput(ctx context.Context) error {
	o := b.o
	stopNoop, err := b.startNoop(o.replicas)
	if err != nil {
		return err
	}
	defer stopNoop()
	f, err := b.startReplicas(ctx, o.replicas, broker.DefaultPools(), 10*time.Minute, b.replicaLog)
	if err != nil {
		return err
	}
	defer f.stop()
	conns, closeConns, err := b.connectN(o.conns)
	if err != nil {
		return err
	}
	defer closeConns()

	msg := []byte(`{"gl_path":"/azure/"}`)
	noopCall := b.request(b.noop, msg, noReply)
	brokerCall := b.request(b.subject, msg, isDefaultRouter)
	run, settle := b.rounds()
	fmt.Fprintf(b.out, "%d callers on %d connections send request contexts %s with nc.Request.\n", o.callers, o.conns, msg)
	fmt.Fprintf(b.out, "Each is measured for %v in all, in %d runs of %v taken in turns (no-op first in odd rounds, the broker in even ones),\n", o.duration, o.rounds, run)
	fmt.Fprintf(b.out, "after a %v warm-up of each and %v to settle before each run.\n\n", o.warmup, settle)
	b.closedLoop(ctx, conns, noopCall, o.warmup, 0)
	b.closedLoop(ctx, conns, brokerCall, o.warmup, 0)
	var noop, brk benchResult
	var rates, p99s []float64
	// Turns, so that a machine that speeds up or slows down during the run
	// favours neither.
	for round := 1; round <= o.rounds && ctx.Err() == nil; round++ {
		var n, r benchResult
		if round%2 == 1 {
			n = b.closedLoop(ctx, conns, noopCall, settle, run)
			r = b.closedLoop(ctx, conns, brokerCall, settle, run)
		} else {
			r = b.closedLoop(ctx, conns, brokerCall, settle, run)
			n = b.closedLoop(ctx, conns, noopCall, settle, run)
		}
		rates = append(rates, r.rate()/n.rate())
		p99s = append(p99s, float64(r.pct(0.99))/float64(n.pct(0.99)))
		noop.merge(n)
		brk.merge(r)
	}
	if ctx.Err() != nil {
		return nil
	}
	slices.Sort(noop.lat)
	slices.Sort(brk.lat)
	fmt.Fprintf(b.out, "%-26s %12s %10s %10s %10s %8s\n", "", "requests/s", "p50", "p99", "p99.9", "errors")
	b.row(fmt.Sprintf("no-op responder (%d)", o.replicas), noop)
	b.row(fmt.Sprintf("broker (%d replicas)", o.replicas), brk)
	fmt.Fprintln(b.out)
	tr := brk.rate() / noop.rate()
	lr := float64(brk.pct(0.99)) / float64(noop.pct(0.99))
	fmt.Fprintf(b.out, "broker / no-op, round by round: throughput %s; p99 %s\n", spread(rates), spread(p99s))
	fmt.Fprintf(b.out, "broker / no-op: throughput %.3f (target ≥ 0.90: %s), p99 %.3f (target ≤ 1.20: %s)\n",
		tr, targetVerdict(tr >= 0.90), lr, targetVerdict(lr <= 1.20))
	return nil
}

func (b *bench) row(name string, r benchResult) {
	fmt.Fprintf(b.out, "%-26s %12.0f %10s %10s %10s %8d\n", name, r.rate(), fmtLatency(r.pct(0.5)), fmtLatency(r.pct(0.99)), fmtLatency(r.pct(0.999)), r.errors)
}

func targetVerdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

// fmtLatency formats a duration for the reports: microseconds below a
// millisecond, else milliseconds.
func fmtLatency(d time.Duration) string {
	if d < time.Millisecond {
		return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond))
	}
	return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
}

// benchPools is n routers in pools of about n/pools: /p0/ over /p0/r0/,
// /p0/r1/, ...
func benchPools(pools, routers int) []broker.Pool {
	ps := make([]broker.Pool, pools)
	for i := range ps {
		ps[i].Ingress = fmt.Sprintf("/p%d/", i)
	}
	for j := range routers {
		p := &ps[j%pools]
		p.Routers = append(p.Routers, broker.Router{Path: fmt.Sprintf("%sr%d/", p.Ingress, len(p.Routers)), Weight: 1})
	}
	return ps
}

// disableHook passes a replica's log on and reports each "router
// disabled" line, which the broker writes when it has taken a router out
// of its pools' choices, with the time the line was made.
type disableHook struct {
	slog.Handler
	replica int
	seen    chan<- disableSeen
	dropped *atomic.Int64
}

type disableSeen struct {
	replica int
	router  string
	at      time.Time
}

func (h disableHook) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn || h.Handler.Enabled(ctx, l)
}

func (h disableHook) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "router disabled" {
		r.Attrs(func(a slog.Attr) bool {
			if a.Key != "router" {
				return true
			}
			select {
			case h.seen <- disableSeen{h.replica, a.Value.String(), r.Time}:
			default:
				h.dropped.Add(1)
			}
			return false
		})
	}
	if h.Handler.Enabled(ctx, r.Level) {
		return h.Handler.Handle(ctx, r)
	}
	return nil
}

func (h disableHook) WithAttrs(as []slog.Attr) slog.Handler {
	h.Handler = h.Handler.WithAttrs(as)
	return h
}

func (h disableHook) WithGroup(name string) slog.Handler {
	h.Handler = h.Handler.WithGroup(name)
	return h
}

// propagation measures how long a failure report takes to reach every
// replica's choices.
func (b *bench) propagation(ctx context.Context) error {
	o := b.o
	pools := benchPools((o.trials+9)/10, o.trials)
	seen := make(chan disableSeen, o.trials*o.replicas+64)
	var dropped atomic.Int64
	f, err := b.startReplicas(ctx, o.replicas, pools, time.Hour, func(i int) *slog.Logger {
		return slog.New(disableHook{Handler: b.replicaLog(i).Handler(), replica: i, seen: seen, dropped: &dropped})
	})
	if err != nil {
		return err
	}
	defer f.stop()
	nc, err := b.connect()
	if err != nil {
		return err
	}
	defer nc.Close()

	fmt.Fprintf(b.out, "%d replicas, %d pools, %d trials; each trial sends one failure report (egress_status_code 502)\n", o.replicas, len(pools), o.trials)
	fmt.Fprintf(b.out, "for a router of its own through the queue group and waits for every replica to drop it.\n\n")
	var fromSend, fromFirst, confirmed, first []time.Duration
	lost := 0
	for t := 0; t < o.trials && ctx.Err() == nil; t++ {
		p := pools[t%len(pools)]
		router := p.Routers[t/len(pools)].Path
		report := fmt.Appendf(nil, `{"gl_path":%q,"egress_status_code":502}`, router)
		t0 := time.Now()
		if _, err := nc.Request(b.subject, report, time.Second); err != nil {
			return fmt.Errorf("trial %d: failure report: %w", t+1, err)
		}
		at := make([]time.Time, o.replicas)
		heard := 0
		deadline := time.NewTimer(5 * time.Second)
		for heard < o.replicas {
			select {
			case d := <-seen:
				if d.router == router && at[d.replica].IsZero() {
					at[d.replica] = d.at
					heard++
				}
			case <-deadline.C:
				heard = o.replicas + 1
			case <-ctx.Done():
				deadline.Stop()
				return nil
			}
		}
		deadline.Stop()
		if heard > o.replicas {
			lost++
			continue
		}
		// The broker logs the change once the pool's snapshot is
		// swapped; make sure no replica can still choose the router.
		for _, br := range f.brokers {
			for slices.Contains(br.Routers(p.Ingress), router) {
				if time.Since(t0) > 5*time.Second {
					return fmt.Errorf("trial %d: a replica still chooses %s 5s after its failure report", t+1, router)
				}
				runtime.Gosched()
			}
		}
		done := time.Now()
		lo, hi := slices.MinFunc(at, time.Time.Compare), slices.MaxFunc(at, time.Time.Compare)
		first = append(first, lo.Sub(t0))
		fromSend = append(fromSend, hi.Sub(t0))
		fromFirst = append(fromFirst, hi.Sub(lo))
		confirmed = append(confirmed, done.Sub(t0))
	}
	if ctx.Err() != nil {
		return nil
	}
	fmt.Fprintf(b.out, "%-58s %9s %9s %9s\n", "", "p50", "p99", "max")
	for _, s := range []struct {
		name string
		d    []time.Duration
	}{
		{"first replica drops it (from sending the report)", first},
		{"last replica drops it (from sending the report)", fromSend},
		{"last replica drops it (from the first replica dropping it)", fromFirst},
		{"checked with Routers() after the last drop (upper bound)", confirmed},
	} {
		slices.Sort(s.d)
		r := benchResult{lat: s.d}
		fmt.Fprintf(b.out, "%-58s %9s %9s %9s\n", s.name, fmtLatency(r.pct(0.5)), fmtLatency(r.pct(0.99)), fmtLatency(r.pct(1)))
	}
	r := benchResult{lat: fromSend}
	fmt.Fprintf(b.out, "\ntrials %d, not propagated within 5s %d, hook events dropped %d, KV writes %d (one per disable: %d)\n",
		len(fromSend)+lost, lost, dropped.Load(), f.kvWrites(), len(fromSend)+lost)
	fmt.Fprintf(b.out, "last replica p99 %s (target ≤ 10ms: %s)\n", fmtLatency(r.pct(0.99)), targetVerdict(lost == 0 && r.pct(0.99) <= 10*time.Millisecond))
	return nil
}

// storm measures the request path with and without 10,000 failure
// reports a second for one router, in turns: baseline, storm, baseline,
// and so on, ending with a baseline, so that a machine whose speed drifts
// favours neither.
func (b *bench) storm(ctx context.Context) error {
	o := b.o
	f, err := b.startReplicas(ctx, o.replicas, broker.DefaultPools(), 10*time.Minute, b.replicaLog)
	if err != nil {
		return err
	}
	defer f.stop()
	conns, closeConns, err := b.connectN(o.conns)
	if err != nil {
		return err
	}
	defer closeConns()
	snc, err := b.connect()
	if err != nil {
		return err
	}
	defer snc.Close()

	const victim = "/azure/dud/"
	var answered atomic.Int64
	inbox := nats.NewInbox()
	sub, err := snc.Subscribe(inbox, func(*nats.Msg) { answered.Add(1) })
	if err != nil {
		return err
	}
	defer sub.Unsubscribe()
	report := []byte(`{"gl_path":"` + victim + `","egress_status_code":502}`)
	var sent int64
	storm := func(subject string, d time.Duration) func() {
		s := b.startReportStorm(ctx, snc, subject, inbox, report, d)
		return func() { sent += s.stop() }
	}
	run, settle := b.rounds()

	fmt.Fprintf(b.out, "The storm: %d failure reports per second for %s, sent as gecholog sends them (requests; the replies are counted).\n", o.reports, victim)
	fmt.Fprintf(b.out, "%d callers on %d connections send request contexts, with and without the storm: each measured for %v in all,\n", o.callers, o.conns, o.duration)
	fmt.Fprintf(b.out, "in %d runs of %v taken in turns (baseline first and last), after a %v warm-up and %v to settle before each run.\n", o.rounds, run, o.warmup, settle)
	fmt.Fprintf(b.out, "The same is measured against %d no-op responders, so that the bus's own cost of the storm can be told from the broker's.\n\n", o.replicas)

	// What the storm costs the machine on its own: the process's CPU time
	// with nothing running, then with only the storm.
	writes0 := f.kvWrites()
	seq0, err := b.bucketSeq(ctx, snc)
	if err != nil {
		return err
	}
	window := min(2*time.Second, o.duration)
	c0 := cpuTime()
	sleep(ctx, window)
	idle := cpuTime() - c0
	stop := storm(b.subject, window+time.Second)
	c0 = cpuTime()
	sleep(ctx, window)
	alone := cpuTime() - c0
	stop()

	// turns measures calls to subject with and without a storm on the
	// same subject, in turns.
	turns := func(subject string, call func(*nats.Conn) error) (base, during benchResult, drops []float64) {
		b.closedLoop(ctx, conns, call, o.warmup, 0)
		last := b.closedLoop(ctx, conns, call, settle, run)
		base.merge(last)
		for round := 0; round < o.rounds && ctx.Err() == nil; round++ {
			stop := storm(subject, settle+run+time.Second)
			r := b.closedLoop(ctx, conns, call, settle, run)
			stop()
			during.merge(r)
			next := b.closedLoop(ctx, conns, call, settle, run)
			base.merge(next)
			drops = append(drops, 1-2*r.rate()/(last.rate()+next.rate()))
			last = next
		}
		return base, during, drops
	}
	base, during, drops := turns(b.subject, b.request(b.subject, []byte(`{"gl_path":"/azure/"}`), isDefaultRouter))
	stopNoop, err := b.startNoop(o.replicas)
	if err != nil {
		return err
	}
	defer stopNoop()
	noopBase, noopDuring, noopDrops := turns(b.noop, b.request(b.noop, []byte(`{"gl_path":"/azure/"}`), func([]byte) bool { return true }))
	if ctx.Err() != nil {
		return nil
	}
	// The replies and any write the storm caused finish in the
	// background; let them settle before counting.
	_ = snc.Flush()
	for end := time.Now().Add(2 * time.Second); answered.Load() < sent && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	writes := f.kvWrites() - writes0

	// The bucket keeps one revision per key, so count the writes that
	// landed by the stream's sequence: nothing else writes to it here.
	seq1, err := b.bucketSeq(ctx, snc)
	if err != nil {
		return err
	}
	landed := int(seq1 - seq0)
	js, err := jetstream.New(snc)
	if err != nil {
		return err
	}
	disables := 0
	bucket, err := js.KeyValue(ctx, b.bucket)
	if err != nil {
		return err
	}
	if e, err := bucket.Get(ctx, victim); err == nil {
		if r, err := kv.Decode(victim, e.Value()); err == nil && !r.Manual {
			disables = 1 // the disable lasts the whole run (10 minutes)
		}
	}
	for _, r := range []*benchResult{&base, &during, &noopBase, &noopDuring} {
		slices.Sort(r.lat)
	}
	fmt.Fprintf(b.out, "%-26s %12s %10s %10s %10s %8s\n", "", "requests/s", "p50", "p99", "p99.9", "errors")
	b.row("broker, baseline", base)
	b.row("broker, during the storm", during)
	b.row("no-op, baseline", noopBase)
	b.row("no-op, during the storm", noopDuring)
	drop := 1 - during.rate()/base.rate()
	noopDrop := 1 - noopDuring.rate()/noopBase.rate()
	fmt.Fprintf(b.out, "\nthroughput drop, each storm run against the baselines either side: broker %s; no-op %s\n", spread(drops), spread(noopDrops))
	fmt.Fprintf(b.out, "failure reports sent %d, answered %d\n", sent, answered.Load())
	if idle > 0 || alone > 0 {
		fmt.Fprintf(b.out, "process CPU time per second: idle %v, the storm alone %v (%.1f%% of %d CPUs)\n",
			perSecond(idle, window), perSecond(alone, window), 100*alone.Seconds()/window.Seconds()/float64(runtime.NumCPU()), runtime.NumCPU())
	}
	fmt.Fprintf(b.out, "disable events %d; KV writes: attempted %d (Stats().KVWrites over the replicas, counting lost compare-and-set races), landed %d (the bucket stream's sequence)\n",
		disables, writes, landed)
	fmt.Fprintf(b.out, "writes per disable event: %s (target ≤ 1: %s)\n", writesPerEvent(landed, disables), targetVerdict(disables > 0 && landed <= disables))
	fmt.Fprintf(b.out, "throughput during the storm vs the baselines: %.1f%% drop (target ≤ 5%%: %s)\n",
		100*drop, targetVerdict(drop <= 0.05))
	fmt.Fprintf(b.out, "the same storm costs a no-op responder %.1f%%: the broker's own share of the drop is %.1f points\n",
		100*noopDrop, 100*(drop-noopDrop))
	return nil
}

// bucketSeq is the bucket stream's last sequence: how many writes it has
// ever taken.
func (b *bench) bucketSeq(ctx context.Context, nc *nats.Conn) (uint64, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return 0, err
	}
	stream, err := js.Stream(ctx, "KV_"+b.bucket)
	if err != nil {
		return 0, err
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.LastSeq, nil
}

// reportStorm is failure reports sent at a fixed rate.
type reportStorm struct {
	sent   atomic.Int64
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// startReportStorm publishes report to subject as a request with replies to inbox,
// -reports times a second, until stopped or for at most limit.
func (b *bench) startReportStorm(ctx context.Context, nc *nats.Conn, subject, inbox string, report []byte, limit time.Duration) *reportStorm {
	sctx, cancel := context.WithTimeout(ctx, limit)
	s := &reportStorm{cancel: cancel}
	rate := float64(b.o.reports)
	most := int64(rate * limit.Seconds())
	s.wg.Go(func() {
		start := time.Now()
		for n := int64(0); n < most && sctx.Err() == nil; {
			due := min(int64(time.Since(start).Seconds()*rate), most)
			for ; n < due; n++ {
				if nc.PublishRequest(subject, inbox, report) != nil {
					return
				}
				s.sent.Add(1)
			}
			time.Sleep(200 * time.Microsecond)
		}
	})
	return s
}

// stop ends the storm and returns how many reports it sent.
func (s *reportStorm) stop() int64 {
	s.cancel()
	s.wg.Wait()
	return s.sent.Load()
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func perSecond(d, window time.Duration) time.Duration {
	return time.Duration(float64(d) / window.Seconds()).Round(time.Millisecond)
}

// cpuTime is the CPU time, user and system, the process has used, from
// /proc/self/stat; 0 where there is none. The kernel counts it in ticks of
// USER_HZ, which is 100 on every Linux the broker builds for.
func cpuTime() time.Duration {
	data, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0
	}
	// The command name in parentheses may hold spaces; the fields after
	// it start with the state (field 3), so utime (14) and stime (15)
	// are the 12th and 13th.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0
	}
	fields := strings.Fields(string(data[i+1:]))
	if len(fields) < 13 {
		return 0
	}
	utime, err1 := strconv.ParseInt(fields[11], 10, 64)
	stime, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0
	}
	return time.Duration(utime+stime) * (time.Second / 100)
}

func writesPerEvent(writes, events int) string {
	if events == 0 {
		return "no disable event"
	}
	return strconv.FormatFloat(float64(writes)/float64(events), 'f', 2, 64)
}

// benchMemory is the process's memory at one moment, after a collection.
type benchMemory struct {
	heap uint64 // live heap
	rss  uint64 // resident set; 0 where /proc is missing
	gors int
}

func readBenchMemory() benchMemory {
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return benchMemory{heap: ms.HeapAlloc, rss: vmRSS(), gors: runtime.NumGoroutine()}
}

// vmRSS reads the resident set size from /proc/self/status.
func vmRSS() uint64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				return 0
			}
			return kb * 1024
		}
	}
	return 0
}

func fmtMB(n uint64) string { return fmt.Sprintf("%.1f MB", float64(n)/(1<<20)) }

func fmtMBDelta(a, b uint64) string {
	return fmt.Sprintf("%+.1f MB", (float64(b)-float64(a))/(1<<20))
}

// scale starts a replica with many pools and routers against a bucket
// that already holds a record for each router.
func (b *bench) scale(ctx context.Context) error {
	o := b.o
	pools := benchPools(o.pools, o.routers)
	nc, err := b.connect()
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	store, err := kv.Open(ctx, js, kv.Config{Bucket: b.bucket, Owner: "bench", Linger: 2 * time.Minute})
	if err != nil {
		return err
	}
	// Half of each pool disabled, the other half with the memo a router
	// that recovered leaves: every key has a record to load.
	now := time.Now()
	live := 0
	for _, p := range pools {
		for j, r := range p.Routers {
			rec := kv.Record{Router: r.Path, Status: 502, Reason: "egress_status_code 502", At: now, By: "bench", Level: 1}
			if j < len(p.Routers)/2 {
				rec.Until = now.Add(10 * time.Minute)
				_, err = store.Update(ctx, rec, 0)
				live++
			} else {
				rec.Ended = now
				_, err = store.Release(ctx, rec, 0)
			}
			if err != nil {
				store.Close()
				return fmt.Errorf("write record %s: %w", r.Path, err)
			}
		}
	}
	store.Close()
	fmt.Fprintf(b.out, "%d pools, %d routers; the bucket holds a record for each: %d disables, %d memos of recovered routers.\n",
		len(pools), o.routers, live, o.routers-live)
	fmt.Fprintf(b.out, "One replica at a time is started (connect, open the bucket, load every record, subscribe) and stopped.\n\n")

	var readies []time.Duration
	var m0, m1, m2 benchMemory
	var perCall time.Duration
	for i := 0; i < o.starts && ctx.Err() == nil; i++ {
		if i == 0 {
			m0 = readBenchMemory()
		}
		t0 := time.Now()
		f, err := b.startReplicas(ctx, 1, pools, 10*time.Minute, b.replicaLog)
		if err != nil {
			return err
		}
		readies = append(readies, time.Since(t0))
		br := f.brokers[0]
		if i == 0 {
			m1 = readBenchMemory()
			if got := br.Stats().Disabled; got != live {
				f.stop()
				return fmt.Errorf("replica loaded %d disabled routers, want %d", got, live)
			}
			// A request context for each pool through NATS, then the
			// choice itself, in process.
			for _, p := range pools {
				m, err := nc.Request(b.subject, []byte(`{"gl_path":"`+p.Ingress+`"}`), time.Second)
				if err != nil || !bytes.HasPrefix(m.Data, []byte(`{"gl_path":"`+p.Ingress)) {
					f.stop()
					return fmt.Errorf("request context for %s: reply %q, %v", p.Ingress, m.Data, err)
				}
			}
			msg := []byte(`{"gl_path":"` + pools[0].Ingress + `"}`)
			const n = 200_000
			t := time.Now()
			for range n {
				br.Handle(msg)
			}
			perCall = time.Since(t) / n
			m2 = readBenchMemory()
		}
		if err := f.stop(); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	sorted := slices.Clone(readies)
	slices.Sort(sorted)
	med := sorted[len(sorted)/2]
	fmt.Fprintf(b.out, "start to ready: %s (first), median %s, max %s over %d starts (target ≤ 500ms: %s)\n",
		fmtLatency(readies[0]), fmtLatency(med), fmtLatency(sorted[len(sorted)-1]), len(readies), targetVerdict(sorted[len(sorted)-1] <= 500*time.Millisecond))
	fmt.Fprintf(b.out, "choice in a pool of %d, in process: %v per request context (Handle)\n\n", len(pools[0].Routers), perCall)
	fmt.Fprintf(b.out, "memory of the process (the server, this program and the replica), after a collection:\n")
	fmt.Fprintf(b.out, "%-34s %12s %12s %11s\n", "", "live heap", "RSS", "goroutines")
	for _, s := range []struct {
		name string
		m    benchMemory
	}{{"before the replica", m0}, {"replica ready", m1}, {"after 200,000 calls", m2}} {
		fmt.Fprintf(b.out, "%-34s %12s %12s %11d\n", s.name, fmtMB(s.m.heap), fmtMB(s.m.rss), s.m.gors)
	}
	fmt.Fprintf(b.out, "the replica's share (after the calls minus before): heap %s, RSS %s (target ≤ 50 MB: %s)\n",
		fmtMBDelta(m0.heap, m2.heap), fmtMBDelta(m0.rss, m2.rss), targetVerdict(int64(m2.rss)-int64(m0.rss) <= 50<<20 && int64(m2.heap)-int64(m0.heap) <= 50<<20))
	fmt.Fprintf(b.out, "(the deltas include the server's side of the replica's connection and watcher, so they overstate the replica)\n")
	return nil
}

// soak runs gecholog-style calls at a fixed rate against three replicas,
// with one router failing a share of its calls.
func (b *bench) soak(ctx context.Context) error {
	o := b.o
	const failing = "/azure/dud/"
	f, err := b.startReplicas(ctx, o.replicas, broker.DefaultPools(), o.disable, b.replicaLog)
	if err != nil {
		return err
	}
	defer f.stop()
	conns, closeConns, err := b.connectN(o.conns)
	if err != nil {
		return err
	}
	defer closeConns()

	fmt.Fprintf(b.out, "%d replicas; %d gecholog calls per second for %v, each a request context then a response context;\n", o.replicas, o.rate, o.duration)
	fmt.Fprintf(b.out, "%s fails %.0f%% of its calls (502); disabled time %v; a call unanswered within %v is an error.\n\n", failing, 100*o.fail, o.disable, o.timeout)
	start := readBenchMemory()

	members := map[string]bool{}
	for _, r := range broker.DefaultPools()[0].Routers {
		members[r.Path] = true
	}
	total := min(int(float64(o.rate)*o.duration.Seconds()), o.maxCalls)
	workers := min(max(o.rate/50, 8), 256)
	jobs := make(chan struct{}, workers)
	var (
		mu               sync.Mutex
		reqLat, respLat  []time.Duration
		timeouts, wrong  int
		behind           int
		chosen           = map[string]int{}
		failed, answered int
	)
	var wg sync.WaitGroup
	for w := range workers {
		nc := conns[w%len(conns)]
		rng := rand.New(rand.NewPCG(uint64(w), 42))
		wg.Go(func() {
			for range jobs {
				t0 := time.Now()
				m, err := nc.Request(b.subject, []byte(`{"gl_path":"/azure/"}`), o.timeout)
				d1 := time.Since(t0)
				var r struct {
					GLPath string `json:"gl_path"`
				}
				if err == nil && (json.Unmarshal(m.Data, &r) != nil || !members[r.GLPath]) {
					err = errWrongReply
				}
				if err != nil {
					mu.Lock()
					reqLat = append(reqLat, d1)
					if errors.Is(err, errWrongReply) {
						wrong++
					} else {
						timeouts++
					}
					mu.Unlock()
					continue
				}
				status := 200
				if r.GLPath == failing && rng.Float64() < o.fail {
					status = 502
				}
				resp := fmt.Appendf(nil, `{"gl_path":%q,"egress_status_code":%d,"inbound_headers":{"Content-Type":["application/json"]}}`, r.GLPath, status)
				t1 := time.Now()
				m, err = nc.Request(b.subject, resp, o.timeout)
				d2 := time.Since(t1)
				mu.Lock()
				chosen[r.GLPath]++
				if status != 200 {
					failed++
				}
				reqLat = append(reqLat, d1)
				switch {
				case err != nil:
					timeouts++
				case len(m.Data) != 0:
					wrong++
				default:
					answered++
				}
				respLat = append(respLat, d2)
				mu.Unlock()
			}
		})
	}
	// The pacer keeps to the schedule; a call that finds every worker
	// busy is counted as behind and made when one is free.
	t0 := time.Now()
	every := time.Duration(float64(time.Second) / float64(o.rate))
	for i := 0; i < total && ctx.Err() == nil; i++ {
		if d := time.Until(t0.Add(time.Duration(i) * every)); d > 0 {
			time.Sleep(d)
		}
		select {
		case jobs <- struct{}{}:
		default:
			behind++
			jobs <- struct{}{}
		}
	}
	close(jobs)
	wg.Wait()
	elapsed := time.Since(t0)
	if ctx.Err() != nil {
		return nil
	}
	end := readBenchMemory()

	slices.Sort(reqLat)
	slices.Sort(respLat)
	var transitions, disables uint64
	for _, br := range f.brokers {
		for _, t := range br.Stats().Transitions {
			transitions += t.N
			if t.Router == failing && t.To == "disabled" {
				disables += t.N
			}
		}
	}
	errs := timeouts + wrong
	fmt.Fprintf(b.out, "calls %d in %v (%.0f/s), %d answered in full; calls that waited for a free worker %d\n",
		total, elapsed.Round(time.Millisecond), float64(total)/elapsed.Seconds(), answered, behind)
	routers := make([]string, 0, len(chosen))
	for r := range chosen {
		routers = append(routers, r)
	}
	slices.Sort(routers)
	fmt.Fprintf(b.out, "chosen:")
	for _, r := range routers {
		fmt.Fprintf(b.out, " %s %d", r, chosen[r])
	}
	fmt.Fprintf(b.out, "; failures reported %d\n", failed)
	fmt.Fprintf(b.out, "%s disabled %d times in the replicas' views (phase changes in all: %d), KV writes %d\n\n", failing, disables, transitions, f.kvWrites())
	fmt.Fprintf(b.out, "%-26s %10s %10s %10s %10s\n", "reply time", "p50", "p99", "p99.9", "max")
	for _, s := range []struct {
		name string
		lat  []time.Duration
	}{{"request context", reqLat}, {"response context", respLat}} {
		r := benchResult{lat: s.lat}
		fmt.Fprintf(b.out, "%-26s %10s %10s %10s %10s\n", s.name, fmtLatency(r.pct(0.5)), fmtLatency(r.pct(0.99)), fmtLatency(r.pct(0.999)), fmtLatency(r.pct(1)))
	}
	fmt.Fprintf(b.out, "\nmemory of the process (server, replicas and callers), after a collection:\n")
	fmt.Fprintf(b.out, "%-10s %12s %12s %11s\n", "", "live heap", "RSS", "goroutines")
	fmt.Fprintf(b.out, "%-10s %12s %12s %11d\n", "start", fmtMB(start.heap), fmtMB(start.rss), start.gors)
	fmt.Fprintf(b.out, "%-10s %12s %12s %11d\n", "end", fmtMB(end.heap), fmtMB(end.rss), end.gors)
	fmt.Fprintf(b.out, "(the end includes this program's own latency samples, %s)\n", fmtMB(uint64(8*(cap(reqLat)+cap(respLat)))))
	fmt.Fprintf(b.out, "\nbroker errors %d: timeouts %d, wrong replies %d (target 0: %s)\n", errs, timeouts, wrong, targetVerdict(errs == 0))
	return nil
}
