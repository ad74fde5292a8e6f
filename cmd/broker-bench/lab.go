package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/standin"
	"github.com/gecholog/broker/replica"
)

// A lab is what the strategy modes measure: replicas serving pools whose
// routers are LLM deployments on loopback (latency, a concurrency limit,
// a request quota with honest rate-limit headers), driven through the
// stand-in for gecholog, which makes the broker's two processor calls
// around each upstream call and then publishes the transaction on the
// logger subject, where every replica learns latency and headroom.
type lab struct {
	f      *replica.Fleet
	cfg    replica.Config // the replicas', for restart
	ups    *standin.Upstreams
	llms   map[string]*standin.LLM // by router
	nc     *nats.Conn
	client *http.Client
	gw     standin.Gateway
	// p holds the replica processes and their callers when the lab runs
	// processes (startProcLab) rather than f; nil otherwise.
	p          *procLab
	closeConns func()
}

// loggerSubject is the bench's topic_exact_logger, apart from other runs
// on a shared server as the broker's subject is.
func (b *bench) loggerSubject() string { return strings.TrimSuffix(b.subject, ".broker") + ".logger" }

// startLab serves llms (router → deployment) and runs the replicas on
// pools, with the in-flight bound given (0: the default).
func (b *bench) startLab(ctx context.Context, pools []broker.Pool, llms map[string]*standin.LLM, bound time.Duration) (*lab, error) {
	l := &lab{ups: &standin.Upstreams{}, llms: llms, client: standin.NewClient(30 * time.Second)}
	for router, llm := range llms {
		if err := l.ups.Add(router, llm); err != nil {
			l.close()
			return nil, err
		}
	}
	l.cfg = replica.Config{
		NATS:          natsconn.Settings{Servers: b.url, Token: b.o.token},
		Subject:       b.subject,
		Bucket:        b.bucket,
		Pools:         pools,
		Policy:        broker.Policy{DisabledTime: 10 * time.Minute},
		InFlightBound: bound,
		LoggerSubject: b.loggerSubject(),
	}
	f, err := replica.StartFleet(ctx, l.cfg, b.o.replicas, b.replicaLog)
	if err != nil {
		l.close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	l.f = f
	if l.nc, err = b.connect(); err != nil {
		l.close()
		return nil, err
	}
	l.gw = standin.Gateway{NC: l.nc, Subject: b.subject, Upstreams: l.ups.URLs, Client: l.client,
		Logger: b.loggerSubject(), Timeout: labTimeout(b.o.timeout), Payload: 1024}
	fmt.Fprintf(b.out, "The stand-in for gecholog makes each call as gecholog does (request context, upstream call, response context with\n"+
		"inbound_headers, then the transaction on %s); it waits up to %v for a processor call.\n", b.loggerSubject(), l.gw.Timeout)
	return l, nil
}

// restart stops every replica, then starts as many anew.
func (l *lab) restart(ctx context.Context, b *bench) error {
	if l.p != nil {
		return l.p.restart(ctx, b)
	}
	n := len(l.f.Replicas)
	if err := l.f.Stop(); err != nil {
		return err
	}
	f, err := replica.StartFleet(ctx, l.cfg, n, b.replicaLog)
	l.f = f
	return err
}

// labTimeout is how long the lab's gateway waits for a processor call:
// what these modes measure is the broker's choices, which a busy machine
// would otherwise turn into errors, so at least a second.
func labTimeout(t time.Duration) time.Duration { return max(t, time.Second) }

// close stops the replicas, then the gateway's connections, then the
// upstreams, in the order the calls flow.
func (l *lab) close() {
	if l.f != nil {
		_ = l.f.Stop() // nil when a restart failed
	}
	if l.p != nil {
		l.p.close()
	}
	if l.closeConns != nil {
		l.closeConns()
	}
	if l.nc != nil {
		l.nc.Close()
	}
	l.client.CloseIdleConnections()
	l.ups.Close()
}

// callLog keeps every call a lab made, for the reports.
type callLog struct {
	mu      sync.Mutex
	results []standin.Result
	errors  int
}

func (c *callLog) add(r standin.Result, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.errors++
		return
	}
	c.results = append(c.results, r)
}

// calls is the calls made, sorted by when their upstream call ended.
func (c *callLog) calls() []standin.Result {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := slices.Clone(c.results)
	slices.SortFunc(out, func(a, b standin.Result) int { return a.Stop.Compare(b.Stop) })
	return out
}

// byRouter counts the calls each router served, and those with status
// (0: any).
func byRouter(calls []standin.Result, status int) map[string]int {
	out := map[string]int{}
	for _, r := range calls {
		if status == 0 || r.Status == status {
			out[r.Router]++
		}
	}
	return out
}

// paced makes calls at random (Poisson) arrivals, rate a second on
// average, until n have started or d has passed, each in its own
// goroutine; at most maxOpen run at once, and a call due when that many
// are open waits for one to end and counts as late, so the load stays
// bounded when the system under it is not. It returns once every call has
// ended.
func paced(ctx context.Context, rate float64, d time.Duration, n, maxOpen int, call func()) (made, late int) {
	open := make(chan struct{}, maxOpen)
	var wg sync.WaitGroup
	t := time.NewTimer(0)
	defer t.Stop()
	start := time.Now()
	due := start
	for made < n && ctx.Err() == nil {
		due = due.Add(time.Duration(rand.ExpFloat64() / rate * float64(time.Second)))
		if due.Sub(start) >= d {
			break
		}
		t.Reset(time.Until(due))
		select {
		case <-ctx.Done():
			continue // and so out
		case <-t.C:
		}
		select {
		case open <- struct{}{}:
		default:
			late++
			open <- struct{}{}
		}
		made++
		wg.Go(func() {
			defer func() { <-open }()
			call()
		})
	}
	wg.Wait()
	return made, late
}

// drive runs a paced load on each ingress at once, each at its rate, and
// logs every call.
func (l *lab) drive(ctx context.Context, d time.Duration, rates map[string]float64, logs map[string]*callLog) (late int) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	for ingress, rate := range rates {
		wg.Go(func() {
			n := int(rate*d.Seconds()*2) + 100 // bounded in count as well as time
			do := l.gw.Do
			if l.p != nil {
				do = l.p.do
			}
			_, lt := paced(ctx, rate, d, n, 4096, func() { logs[ingress].add(do(ctx, ingress)) })
			mu.Lock()
			late += lt
			mu.Unlock()
		})
	}
	wg.Wait()
	return late
}

// routersOf lists a pool's router paths.
func routersOf(p broker.Pool) []string {
	out := make([]string, len(p.Routers))
	for i, r := range p.Routers {
		out[i] = r.Path
	}
	return out
}

// pool builds a pool named /name/ of routers /name/r/ for each r, all
// weight 1 and tier 0 unless given.
func pool(name, strategy string, routers ...string) broker.Pool {
	p := broker.Pool{Ingress: "/" + name + "/", Strategy: strategy}
	for _, r := range routers {
		p.Routers = append(p.Routers, broker.Router{Path: p.Ingress + r + "/", Weight: 1})
	}
	return p
}

// bySpeed gives every router of pools a deployment answering in the time
// speeds gives for the router's name within its pool, give or take spread
// (0.2: ±20%).
func bySpeed(speeds map[string]time.Duration, spread float64, pools ...broker.Pool) map[string]*standin.LLM {
	llms := map[string]*standin.LLM{}
	for _, p := range pools {
		for _, r := range p.Routers {
			d := speeds[r.Path[len(p.Ingress):len(r.Path)-1]]
			off := time.Duration(float64(d) * spread)
			llms[r.Path] = &standin.LLM{Model: "gpt-4o", Latency: standin.Uniform(d-off, d+off)}
		}
	}
	return llms
}

// instant gives every router of pools a deployment that answers at once,
// without limits.
func instant(pools ...broker.Pool) map[string]*standin.LLM {
	llms := map[string]*standin.LLM{}
	for _, p := range pools {
		for _, r := range p.Routers {
			llms[r.Path] = &standin.LLM{Model: "gpt-4o"}
		}
	}
	return llms
}

// compressed says how time is compressed in a mode's report.
func (b *bench) compressed(what string) {
	fmt.Fprintf(b.out, "Time is compressed: %s.\n", what)
}

func pct(n, of int) float64 {
	if of == 0 {
		return 0
	}
	return 100 * float64(n) / float64(of)
}
