// Command broker-bench measures the broker on loopback, one mode at a
// time (modes lists them): throughput against no-op responders, how fast a
// failure report reaches every replica, the cost of a storm of failure
// reports, the start of a replica with many pools, a soak at gecholog's
// call pattern, losing a node of a NATS cluster or cutting one off, and how well each
// strategy chooses among LLM deployments. The replicas run in this
// process, each a full replica.Run with its own NATS connection, as in the
// demo and the end-to-end tests; but -mode reconfig, which measures a
// change of the fleet's configuration, and -mode affinity, which measures
// sessions spread over replicas by the queue group, run the broker binary
// as processes, as a deployment does. -mode ptu with -gl PATH puts the
// real gecholog gateway, a gl binary the user built from
// github.com/direktoren/gecholog, in front of them instead of the stand-in.
//
//	broker-bench [-mode MODE] [flags]
//
// Run "broker-bench -h" for the modes and the settings.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/flagenv"
	"github.com/gecholog/broker/internal/natsbin"
	"github.com/gecholog/broker/internal/natsconn"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "broker-bench:", err)
		os.Exit(1)
	}
}

// options are the bench's settings.
type options struct {
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
	runs     int
	// partition's.
	partitionRuns     int
	partitionTime     time.Duration
	partitionSettings string
	partitionCases    string
	partitionGiven    string
	// nodelossDisabled is DISABLED_TIME in nodeloss mode.
	nodelossDisabled time.Duration
	// The strategy modes'.
	quota  int           // requests per window of a deployment with a quota; 0: the mode's
	window time.Duration // the quota's window
	load   int           // calls per second; 0: the mode's
	calls  int           // drift: calls per pool
	lose   float64       // drift: share of reports lost
	bound  time.Duration // drift: the in-flight bound
	// reconfig's.
	broker      string // the broker binary; "": built
	inProcess   bool   // budget, cost: the replicas in the bench's process, not processes of the binary
	changes     int    // timed one at a time
	loadChanges int    // written under load
	// throughput's.
	strategy string
	// chatter's.
	fleetsText string
	fleets     []int // of fleetsText
	// affinity's.
	sessions     int
	sessionCalls int
	loadFactor   float64
	// ptu's.
	ptuRuns       int
	ptuCalls      int
	ptuCallers    int
	ptuStrategies string
	ptuSerial     bool
	gl            string // the real gecholog gateway's binary; "": the stand-in

	logLevel string
	level    slog.Level // of logLevel
	cpuProf  string
	memProf  string
}

// mode is one of the bench's measurements.
type mode struct {
	name  string
	about string // what it measures, for -h
	// duration is its measuring time by default; 0 for a mode counted in
	// trials, starts, runs or calls.
	duration time.Duration
	// cluster says how it runs a cluster of its own, for the header; ""
	// for the one server the others share.
	cluster string
	quota   int           // its -quota by default
	window  time.Duration // its -window by default; 0: 2s
	run     func(*bench, context.Context) error
}

// modes are the bench's measurements, in the order -h lists them: the
// flags' help, the error for an unknown mode and run all read this table.
var modes = []mode{
	{name: "throughput", about: "replicas against no-op responders", duration: 10 * time.Second, run: (*bench).throughput},
	{name: "propagation", about: "how fast a failure report reaches every replica", run: (*bench).propagation},
	{name: "storm", about: "the cost of a storm of failure reports", duration: 5 * time.Second, run: (*bench).storm},
	{name: "scale", about: "the start of a replica with many pools", run: (*bench).scale},
	{name: "soak", about: "gecholog's call pattern for a while", duration: time.Minute, run: (*bench).soak},
	{name: "nodeloss", about: "losing a node of a NATS cluster", cluster: "3 processes on 127.0.0.1", run: (*bench).nodeloss},
	{name: "partition", about: "one node of a cluster cut off, alive, its routes (and its replica's link) stalled, then healed: how soon its replica says it may be stale and moves, what gecholog's calls lose, whether any write is lost; with the servers' default pings and write deadline, and shorter ones",
		cluster: "3 embedded in the bench on 127.0.0.1, routes through stallable proxies", run: (*bench).partition},
	{name: "strategies", about: "the throughput of each strategy", duration: 10 * time.Second, run: (*bench).strategies},
	{name: "spillover", about: "priority tiers taking a quota's overflow", duration: 40 * time.Second, quota: 50, run: (*bench).spillover},
	{name: "ptu", about: "issue 23's PTU: replica processes, a tier-0 quota window opened by the first call after the last ended, a closed loop of callers; tier 0's share of its quota and the clients' 429s, per run", quota: 100, window: 5 * time.Second, run: (*bench).ptuMode},
	{name: "headroom", about: "the headroom strategy against rate limits", duration: 2 * time.Minute, quota: 50, run: (*bench).headroomMode},
	{name: "latency", about: "the latency strategy against slow deployments", duration: 20 * time.Second, run: (*bench).latencyMode},
	{name: "cost", about: "the cost strategy against random: what the same calls cost", duration: 10 * time.Second, run: (*bench).costMode},
	{name: "budget", about: "a fleet-wide token budget: how far it is overshot", duration: 20 * time.Second, run: (*bench).budgetMode},
	{name: "balance", about: "least-busy's balance", duration: 20 * time.Second, run: (*bench).balance},
	{name: "drift", about: "least-busy when reports are lost", run: (*bench).drift},
	{name: "views", about: "how soon the replicas agree on what the strategies read", run: (*bench).views},
	{name: "affinity", about: "session affinity on replica processes: calls on their session's router, a router disabled mid-run, cached input tokens against random", run: (*bench).affinityMode},
	{name: "chatter", about: "what 3, 10 and 20 idle replica processes cost the bus and the CPU, and what gecholog's transaction log costs them", duration: 10 * time.Second, run: (*bench).chatter},
	{name: "reconfig", about: "how soon replica processes choose by a new revision of the fleet's configuration, and changes under load", duration: 10 * time.Second, run: (*bench).reconfig},
}

// modeNamed returns the mode called name; ok is false when there is none.
func modeNamed(name string) (m mode, ok bool) {
	i := slices.IndexFunc(modes, func(m mode) bool { return m.name == name })
	if i < 0 {
		return mode{}, false
	}
	return modes[i], true
}

// modeHelp is the -mode flag's help: every mode and what it measures.
func modeHelp() string {
	var h strings.Builder
	h.WriteString("`mode`:")
	for i, m := range modes {
		if i > 0 {
			h.WriteString(";")
		}
		fmt.Fprintf(&h, " %s (%s)", m.name, m.about)
	}
	return h.String()
}

// durationHelp is the -duration flag's help: each mode's default.
func durationHelp() string {
	var ds []string
	for _, m := range modes {
		if m.duration > 0 {
			d := m.duration.String()
			if m.duration%time.Minute == 0 {
				d = fmt.Sprintf("%dm", m.duration/time.Minute)
			}
			ds = append(ds, d+" "+m.name)
		}
	}
	return "measuring `time` of each condition (default " + strings.Join(ds, ", ") + "; the other modes count trials, starts, runs, calls or changes)"
}

// modeNames lists the modes' names for an error: "a, b or c".
func modeNames() string {
	names := make([]string, len(modes))
	for i, m := range modes {
		names[i] = m.name
	}
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}

func parseOptions(args []string, getenv func(string) string, stdout io.Writer) (options, error) {
	var o options
	s := flagenv.New("broker-bench", getenv)
	s.String(&o.mode, "mode", "", modes[0].name, modeHelp())
	s.String(&o.server, "server", "", "", "NATS server `URL` on loopback; default: an embedded nats-server with JetStream on a random 127.0.0.1 port")
	s.String(&o.token, "token", "NATS_TOKEN", "", "NATS `token` for -server")
	s.Duration(&o.duration, "duration", "", 0, 0, time.Hour, durationHelp())
	s.Duration(&o.warmup, "warmup", "", time.Second, 0, time.Minute, "warm-up `time` before measuring")
	s.Int(&o.callers, "callers", "", 32, 1, 1024, "concurrent `callers` (throughput, storm)")
	s.Int(&o.conns, "conns", "", 4, 1, 64, "NATS `connections` the callers share")
	s.Int(&o.replicas, "replicas", "", 3, 1, 64, "broker `replicas`, and no-op responders")
	s.String(&o.fleetsText, "fleets", "", "1,3,10,20", "chatter: the fleet `sizes` measured, replica processes each (a fleet of 1 is what the log costs one replica that reads it all)")
	s.String(&o.strategy, "strategy", "", "", "throughput: the pool's `strategy` (default: the broker's default, random)")
	s.Duration(&o.timeout, "timeout", "", 50*time.Millisecond, time.Millisecond, time.Minute, "a call without a reply within this `time` is an error (gecholog's processor timeout is 50ms)")
	s.Int(&o.maxCalls, "max-calls", "", 10_000_000, 1, 100_000_000, "at most this many `calls` per measured run")
	s.Int(&o.rounds, "rounds", "", 10, 1, 1000, "throughput and storm: `runs` each condition's measuring time is split into, taken in turns")
	s.Int(&o.trials, "trials", "", 1000, 1, 100_000, "propagation: `trials`, each with a router of its own; views: trials of three changes each")
	s.Int(&o.reports, "reports", "", 10_000, 1, 1_000_000, "storm: failure `reports` per second")
	s.Int(&o.pools, "pools", "", 100, 1, 10_000, "scale: `pools`")
	s.Int(&o.routers, "routers", "", 1000, 1, 100_000, "scale: `routers` in all, each with a record in the bucket")
	s.Int(&o.starts, "starts", "", 5, 1, 100, "scale: replica `starts` timed")
	s.Int(&o.rate, "rate", "", 2000, 1, 1_000_000, "soak: gecholog `calls` per second, each a request and a response context")
	s.Float(&o.fail, "fail", "", 0.3, 0, 1, "soak: `fraction` of the failing router's calls that fail")
	s.Duration(&o.disable, "soak-disable", "", time.Second, time.Second, time.Hour, "soak: the disabled `time`, short so that routers cycle through disable, probe and enable")
	s.Int(&o.runs, "runs", "", 20, 1, 1000, "nodeloss: `runs` for each kind of node lost")
	s.Int(&o.partitionRuns, "partition-runs", "", 3, 1, 100, "partition: `runs` of each case under each settings")
	s.Duration(&o.partitionTime, "partition-time", "", 10*time.Second, time.Second, 10*time.Minute, "partition: how long a node stays cut off (`time`)")
	s.String(&o.partitionCases, "partition-cases", "", partitionCaseKeys(), "partition: the `cases`, comma-separated: the cut-off node a follower or the stream leader, cut from its replica too (+replica) or not")
	s.String(&o.partitionGiven, "partition-given", "", "all", "partition: the nodes each replica is `given`: all (NATS_URL lists every node, as docs/cluster.md asks; the replica on the cut-off node is one nats.go put there) or one (its own, learning the others from the cluster)")
	s.String(&o.partitionSettings, "partition-settings", "", "defaults,deadline,routes,clients", "partition: the servers' `settings`, comma-separated: "+partitionSettingNames())
	s.Duration(&o.nodelossDisabled, "nodeloss-disabled-time", "", time.Minute, time.Second, time.Hour, "nodeloss: the disabled `time`; over 30s, each run also waits for every disable to land")
	s.Int(&o.quota, "quota", "", 0, 0, 1_000_000, "spillover, headroom, ptu: a deployment's request `quota` per window (default 50; 100 ptu)")
	s.Duration(&o.window, "window", "", 0, time.Second, time.Hour, "spillover, headroom, ptu: the quota's `window`, compressed from the real APIs' minute (default 2s; 5s ptu)")
	s.Int(&o.load, "load", "", 0, 0, 100_000, "latency, cost, balance: `calls` per second to each pool (default 40 latency and cost, 150 balance)")
	s.Int(&o.calls, "calls", "", 100_000, 1, 10_000_000, "drift: `calls` to each pool")
	s.Float(&o.lose, "lose", "", 0.01, 0, 1, "drift: `fraction` of the calls whose report (response context) is lost")
	s.Duration(&o.bound, "inflight-bound", "", 5*time.Second, time.Second, time.Hour, "drift: the in-flight `bound`, short so that the bench ends")
	s.String(&o.broker, "broker", "", "", "reconfig, affinity, budget: the broker `binary` run as replica processes (default: built from this module with go build)")
	s.Bool(&o.inProcess, "in-process", "", "budget, cost: run the replicas in the bench's own process rather than as processes of the broker binary")
	s.Int(&o.changes, "changes", "", 100, 1, 10_000, "reconfig: configuration `changes` timed one at a time")
	s.Int(&o.loadChanges, "load-changes", "", 20, 0, 10_000, "reconfig: configuration `changes` written during the runs under load")
	s.Int(&o.sessions, "sessions", "", 1000, 1, 100_000, "affinity: `sessions` in each run")
	s.Int(&o.sessionCalls, "session-calls", "", 10, 3, 100, "affinity: `calls` of each session, one after the other")
	s.Float(&o.loadFactor, "load-factor", "", 0, 0, 10, "affinity: the pools' load_factor (0: the broker's default, 1.5; else 1.1 to 10)")
	s.Int(&o.ptuRuns, "ptu-runs", "", 3, 1, 100, "ptu: `runs` of each strategy")
	s.Int(&o.ptuCalls, "ptu-calls", "", 3000, 1, 1_000_000, "ptu: `calls` in each run")
	s.Int(&o.ptuCallers, "ptu-callers", "", 4, 1, 1024, "ptu: `callers` in the closed loop, each making its calls one after the other")
	s.String(&o.ptuStrategies, "ptu-strategies", "", "random,headroom", "ptu: the pools' `strategies`, comma-separated, each run for each")
	s.Bool(&o.ptuSerial, "ptu-serial", "", "ptu: the client waits for the response context and the transaction before its next call (default: it has its answer first, as gecholog's async response processors give it)")
	s.String(&o.gl, "gl", "", "", "ptu: the real gecholog gateway, a `gl` binary built from github.com/direktoren/gecholog's cmd/gl, run in front of the replicas, the callers its HTTP clients (default: the stand-in for gecholog)")
	s.String(&o.logLevel, "log-level", "", "error", "replicas' log `level` on stderr: debug, info, warn or error")
	s.String(&o.cpuProf, "cpuprofile", "", "", "write a CPU profile of the whole run (server, replicas and callers) to `file`")
	s.String(&o.memProf, "memprofile", "", "", "write an allocation profile of the whole run to `file`")
	if err := s.Parse(args, "Usage: broker-bench [flags]", stdout); err != nil {
		return o, err
	}
	m, ok := modeNamed(o.mode)
	if !ok {
		return o, fmt.Errorf("mode %q: %s", o.mode, modeNames())
	}
	if o.quota == 0 {
		o.quota = m.quota
	}
	if o.duration == 0 {
		o.duration = m.duration
	}
	if o.window == 0 {
		o.window = cmp.Or(m.window, 2*time.Second)
	}
	for _, s := range strings.Split(o.ptuStrategies, ",") {
		if !slices.Contains(broker.Strategies(), s) {
			return o, fmt.Errorf("-ptu-strategies: %q is no strategy", s)
		}
	}
	for _, s := range strings.Split(o.partitionSettings, ",") {
		if !slices.ContainsFunc(partitionSettings, func(rs routeSettings) bool { return rs.name == s }) {
			return o, fmt.Errorf("-partition-settings: %q is none of %s", s, partitionSettingNames())
		}
	}
	if o.partitionGiven != "all" && o.partitionGiven != "one" {
		return o, fmt.Errorf("-partition-given %q: all or one", o.partitionGiven)
	}
	for _, s := range strings.Split(o.partitionCases, ",") {
		if !slices.ContainsFunc(partitionCases, func(pc partitionCase) bool { return pc.key() == s }) {
			return o, fmt.Errorf("-partition-cases: %q is none of %s", s, partitionCaseKeys())
		}
	}
	if o.gl != "" {
		if o.mode != "ptu" {
			return o, fmt.Errorf("-gl: only -mode ptu runs the real gecholog gateway, not -mode %s", o.mode)
		}
		if fi, err := os.Stat(o.gl); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return o, fmt.Errorf("-gl %q: no gl binary there; build one with go build -o gl ./cmd/gl in a copy of github.com/direktoren/gecholog", o.gl)
		}
	}
	if err := o.level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return o, fmt.Errorf("log-level %q: debug, info, warn or error", o.logLevel)
	}
	if o.server != "" {
		if err := loopbackOnly(o.server); err != nil {
			return o, err
		}
	}
	if o.loadFactor != 0 && !broker.LoadFactorRange.Contains(o.loadFactor) {
		return o, fmt.Errorf("-load-factor %g: give 0 for the broker's default, or a load factor %s", o.loadFactor, broker.LoadFactorRange)
	}
	if o.strategy != "" && !slices.Contains(broker.Strategies(), o.strategy) {
		return o, fmt.Errorf("-strategy %q: %s", o.strategy, strings.Join(broker.Strategies(), ", "))
	}
	fleets, err := parseFleets(o.fleetsText)
	if err != nil {
		return o, err
	}
	o.fleets = fleets
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
			return fmt.Errorf("server %q: %w", natsconn.Redact(s), err)
		}
		host := u.Hostname()
		if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return fmt.Errorf("server %q: the bench runs on loopback only (127.0.0.1, ::1 or localhost)", natsconn.Redact(s))
		}
	}
	return nil
}

// bench is one run of the program.
type bench struct {
	o       options
	url     string
	version string // the server's
	where   string
	subject string // the replicas'
	noop    string // the no-op responders'
	bucket  string
	srv     *server.Server // the embedded server; nil with -server
	out     io.Writer
	stderr  io.Writer
}

// run is the whole program: main only supplies the process's arguments,
// environment and output, so tests run it in-process.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	o, err := parseOptions(args, getenv, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	// A random token keeps runs against a shared -server apart.
	tok := strings.ToLower(nats.NewInbox()[len(nats.InboxPrefix):])
	b := &bench{o: o, out: stdout, stderr: stderr,
		subject: "bench." + tok + ".broker", noop: "bench." + tok + ".noop", bucket: "bench_" + tok}
	m, _ := modeNamed(o.mode) // parseOptions refused any other
	if m.cluster != "" {
		fmt.Fprintf(stdout, "broker bench -mode %s: nats-server %s (%s), %s %s/%s, GOMAXPROCS %d\n\n",
			m.name, natsbin.Embedded, m.cluster, runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.GOMAXPROCS(0))
		if err := m.run(b, ctx); err != nil || ctx.Err() == nil {
			return err
		}
		return errors.New("bench interrupted")
	}
	stopServer, err := b.startServer()
	if err != nil {
		return err
	}
	defer stopServer()

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
				fmt.Fprintln(stderr, "broker-bench: memprofile:", err)
			}
		}()
	}
	err = m.run(b, ctx)
	if err == nil && ctx.Err() != nil {
		err = errors.New("bench interrupted")
	}
	return err
}
