package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gecholog/broker/kv"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Replica processes: the broker binary, started as a deployment starts it
// (its settings in the environment, its log in JSON on stderr, a metrics
// listener of its own), for the modes that measure what separate
// processes do.

// brokerBinary returns -broker, or builds the broker command of this
// module into a temporary folder, removed by the function it returns.
func (b *bench) brokerBinary(ctx context.Context) (path string, remove func(), err error) {
	if b.o.broker != "" {
		return b.o.broker, func() {}, nil
	}
	dir, err := os.MkdirTemp("", "broker-bench-bin-")
	if err != nil {
		return "", nil, err
	}
	path = filepath.Join(dir, "broker")
	out, err := exec.CommandContext(ctx, "go", "build", "-o", path, "github.com/gecholog/broker/cmd/broker").CombinedOutput()
	if err != nil {
		os.RemoveAll(dir)
		return "", nil, fmt.Errorf("go build the broker: %v: %s; run the bench inside the module, or give -broker PATH",
			err, strings.Join(strings.Fields(string(out)), " "))
	}
	return path, func() { os.RemoveAll(dir) }, nil
}

// brokerProc is one replica process and what the bench has read of its
// log.
type brokerProc struct {
	id   string
	cmd  *exec.Cmd
	done chan struct{} // closed once the log has ended and the process was waited for

	mu       sync.Mutex
	addr     string               // the metrics listener's host:port
	serving  bool                 // it logged "serving"
	servedAt string               // on the server its "serving" line names
	applied  map[uint64]time.Time // revision → its "applied" line's own time
	// disabled is, by router, its first "router disabled" line's own time.
	disabled map[string]time.Time
	// events are its first lines, what each said, in order.
	events    []logEvent
	movedFrom []string      // the "from" of each "moving to another NATS server" line
	last      string        // the last warning or error it logged, for an error
	grew      chan struct{} // closed and replaced when any of the above changes
	ended     bool
}

// appliedLine is the line a replica logs once it chooses by a new
// revision: after its table is swapped.
const appliedLine = "applied a new revision of the fleet's configuration"

// disabledLine is the line a replica logs once it has taken a router
// out, on its own failure report or on the bucket's word.
const disabledLine = "router disabled"

// reconnectedLine is the line a replica logs once its connection is up
// again, naming the server.
const reconnectedLine = "reconnected to NATS"

// movingLine begins the line a replica logs when it moves to another
// server on its own.
const movingLine = "moving to another NATS server"

// logEvent is one line of a replica's log: its message, the server it
// names, and its own time.
type logEvent struct {
	msg, server string
	at          time.Time
}

// maxEvents bounds the lines of a replica's log kept as events: a
// partition's run is a fresh process, which logs a few dozen.
const maxEvents = 1 << 12

// maxDisabledSeen bounds the routers whose disable a replica's log is
// followed for.
const maxDisabledSeen = 1 << 16

// procStartTimeout bounds a replica process's start on a busy machine.
const procStartTimeout = 30 * time.Second

// startProcs starts n replica processes of bin on the bench's server,
// subject and bucket, following the fleet's configuration, and returns
// once every one serves. stop ends them and waits for them.
func (b *bench) startProcs(ctx context.Context, bin string, n int) (procs []*brokerProc, stop func(), err error) {
	stop = func() {
		for _, p := range procs {
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
		}
		for _, p := range procs {
			select {
			case <-p.done:
			case <-time.After(10 * time.Second):
				_ = p.cmd.Process.Kill()
				<-p.done
			}
		}
	}
	for i := range n {
		p, err := b.spawn(bin, fmt.Sprintf("bench-r%d", i+1))
		if err != nil {
			stop()
			return nil, nil, err
		}
		procs = append(procs, p)
	}
	deadline := time.NewTimer(procStartTimeout)
	defer deadline.Stop()
	for _, p := range procs {
		for {
			p.mu.Lock()
			ok, ended, grew, last := p.serving && p.addr != "", p.ended, p.grew, p.last
			p.mu.Unlock()
			if ok {
				break
			}
			if ended {
				stop()
				return nil, nil, fmt.Errorf("replica %s exited before it served: %s", p.id, last)
			}
			select {
			case <-grew:
			case <-deadline.C:
				stop()
				return nil, nil, fmt.Errorf("replica %s did not serve within %v: %s", p.id, procStartTimeout, last)
			case <-ctx.Done():
				stop()
				return nil, nil, ctx.Err()
			}
		}
	}
	return procs, stop, nil
}

func (b *bench) spawn(bin, id string) (*brokerProc, error) {
	return b.spawnOn(bin, id, b.url)
}

// spawnOn starts a replica process on the NATS servers at url, with env
// (KEY=value) over the bench's settings.
func (b *bench) spawnOn(bin, id, url string, env ...string) (*brokerProc, error) {
	cmd := exec.Command(bin)
	// Nothing of the caller's environment but these: a developer's NATS_*
	// or BROKER_* must not change what is measured.
	for _, k := range []string{"PATH", "HOME", "TMPDIR"} {
		if v, ok := os.LookupEnv(k); ok {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
	}
	cmd.Env = append(cmd.Env,
		"NATS_URL="+url,
		"BROKER_ID="+id,
		"BROKER_SUBJECT="+b.subject,
		"BROKER_BUCKET="+b.bucket,
		"BROKER_CONFIG_SOURCE=fleet",
		"BROKER_LOG_FORMAT=json",
		"BROKER_LOG_LEVEL=info",
		"BROKER_METRICS_ADDR=127.0.0.1:0",
		"BROKER_LOGGER_SUBJECT="+b.loggerSubject(),
	)
	if b.o.token != "" {
		cmd.Env = append(cmd.Env, "NATS_TOKEN="+b.o.token)
	}
	cmd.Env = append(cmd.Env, env...) // the last of a key's values wins
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p := &brokerProc{id: id, cmd: cmd, done: make(chan struct{}), applied: map[uint64]time.Time{}, disabled: map[string]time.Time{},
		grew: make(chan struct{})}
	go func() {
		defer close(p.done)
		p.read(stderr, b.stderr, b.o.level)
		_ = cmd.Wait() // only once reading is done: Wait closes the pipe
	}()
	return p, nil
}

// maxLogLine bounds a log line the bench reads; a longer one is cut.
const maxLogLine = 1 << 20

// read follows the replica's log until it ends, passing lines at level
// or above on to out.
func (p *brokerProc) read(stderr io.Reader, out io.Writer, level slog.Level) {
	sc := bufio.NewScanner(stderr)
	sc.Buffer(make([]byte, 64<<10), maxLogLine)
	for sc.Scan() {
		p.line(sc.Bytes(), out, level)
	}
	// A line over the bound stops the scanner: drain the rest unread so
	// that the process is never blocked on its pipe.
	_, _ = io.Copy(io.Discard, stderr)
	p.mu.Lock()
	p.ended = true
	close(p.grew)
	p.grew = make(chan struct{})
	p.mu.Unlock()
}

func (p *brokerProc) line(s []byte, out io.Writer, level slog.Level) {
	var l struct {
		Time     time.Time `json:"time"`
		Level    string    `json:"level"`
		Msg      string    `json:"msg"`
		Addr     string    `json:"addr"`
		Revision uint64    `json:"revision"`
		Error    string    `json:"error"`
		Router   string    `json:"router"`
		Server   string    `json:"server"`
		From     string    `json:"from"`
	}
	var lv slog.Level
	if json.Unmarshal(s, &l) != nil || lv.UnmarshalText([]byte(l.Level)) != nil {
		fmt.Fprintf(out, "%s: %s\n", p.id, s) // not slog's: a panic, a race report
		return
	}
	if lv >= level {
		fmt.Fprintf(out, "%s: %s\n", p.id, s)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.events) < maxEvents {
		p.events = append(p.events, logEvent{msg: l.Msg, server: l.Server, at: l.Time})
	}
	if strings.HasPrefix(l.Msg, movingLine) && len(p.movedFrom) < maxEvents {
		p.movedFrom = append(p.movedFrom, l.From)
	}
	switch {
	case l.Msg == "metrics listening":
		p.addr = l.Addr
	case l.Msg == "serving":
		p.serving, p.servedAt = true, l.Server
	case l.Msg == appliedLine && l.Revision > 0:
		if _, ok := p.applied[l.Revision]; !ok {
			p.applied[l.Revision] = l.Time
		}
	case l.Msg == disabledLine && l.Router != "":
		if _, ok := p.disabled[l.Router]; !ok && len(p.disabled) < maxDisabledSeen {
			p.disabled[l.Router] = l.Time
		}
	case lv >= slog.LevelWarn:
		p.last = strings.TrimSpace(l.Msg + " " + l.Error)
	default:
		return
	}
	close(p.grew)
	p.grew = make(chan struct{})
}

// appliedFrom is the time the replica logged applying the first revision
// at or after rev, and whether it has.
func (p *brokerProc) appliedFrom(rev uint64) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var at time.Time
	var found uint64
	for r, t := range p.applied {
		if r >= rev && (found == 0 || r < found) {
			found, at = r, t
		}
	}
	return at, found != 0
}

// waitApplied waits until the replica has logged applying revision rev
// or a later one, or d has passed.
func (p *brokerProc) waitApplied(ctx context.Context, rev uint64, d time.Duration) (time.Time, bool) {
	return p.waitLogged(ctx, d, func() (time.Time, bool) { return p.appliedFrom(rev) })
}

// waitLogged waits until look finds what it looks for in the replica's
// log, the replica ends, or d passes, and says when it was logged.
func (p *brokerProc) waitLogged(ctx context.Context, d time.Duration, look func() (time.Time, bool)) (time.Time, bool) {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		at, ok := look()
		p.mu.Lock()
		grew, ended := p.grew, p.ended
		p.mu.Unlock()
		if ok || ended {
			return at, ok
		}
		select {
		case <-grew:
		case <-deadline.C:
			return time.Time{}, false
		case <-ctx.Done():
			return time.Time{}, false
		}
	}
}

// waitDisabled waits until the replica has logged disabling router, or d
// has passed, and says when it logged it.
func (p *brokerProc) waitDisabled(ctx context.Context, router string, d time.Duration) (time.Time, bool) {
	return p.waitLogged(ctx, d, func() (time.Time, bool) {
		p.mu.Lock()
		defer p.mu.Unlock()
		at, ok := p.disabled[router]
		return at, ok
	})
}

// maxMetricsBody bounds what the bench reads of a /metrics answer.
const maxMetricsBody = 4 << 20

var errNoRevision = errors.New("no broker_config_revision in /metrics")

// revision reads broker_config_revision from the replica's /metrics.
func (p *brokerProc) revision(ctx context.Context, client *http.Client) (uint64, error) {
	f, ok, err := p.metric(ctx, client, "broker_config_revision")
	switch {
	case err != nil:
		return 0, err
	case !ok:
		return 0, errNoRevision
	case f < 0 || f > math.MaxUint32 || f != math.Trunc(f):
		return 0, fmt.Errorf("broker_config_revision %v: not a revision", f)
	}
	return uint64(f), nil
}

// metricsPoll is how often the bench asks a replica's /metrics for its
// revision while it waits for a change.
const metricsPoll = time.Millisecond

// waitRevision asks every replica's /metrics, every metricsPoll, until
// each shows revision rev or a later one, and returns when the bench saw
// each show it; ok is false when one did not within d.
func waitRevision(ctx context.Context, client *http.Client, procs []*brokerProc, rev uint64, d time.Duration) (seen []time.Time, ok bool) {
	seen = make([]time.Time, len(procs))
	got := make([]bool, len(procs))
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var wg sync.WaitGroup
	for i, p := range procs {
		wg.Go(func() {
			tick := time.NewTicker(metricsPoll)
			defer tick.Stop()
			for {
				if r, err := p.revision(ctx, client); err == nil && r >= rev {
					seen[i], got[i] = time.Now(), true
					return
				}
				select {
				case <-tick.C:
				case <-ctx.Done():
					return
				}
			}
		})
	}
	wg.Wait()
	for _, g := range got {
		if !g {
			return seen, false
		}
	}
	return seen, true
}

// fleetSetup is what the modes that run replica processes by the fleet's
// configuration start with: the broker binary, a connection and the
// configuration bucket (created when missing); done undoes them.
func (b *bench) fleetSetup(ctx context.Context) (bin string, nc *nats.Conn, cs *kv.ConfigStore, done func(), err error) {
	bin, remove, err := b.brokerBinary(ctx)
	if err != nil {
		return "", nil, nil, nil, err
	}
	if nc, err = b.connect(); err != nil {
		remove()
		return "", nil, nil, nil, err
	}
	done = func() { nc.Close(); remove() }
	js, err := jetstream.New(nc)
	if err == nil {
		cs, err = kv.OpenConfig(ctx, js, kv.ConfigBucket(b.bucket), true)
	}
	if err != nil {
		done()
		return "", nil, nil, nil, err
	}
	return bin, nc, cs, done, nil
}
