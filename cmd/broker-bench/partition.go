package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/gecholog/broker/internal/testutil/natstest"
)

// routeSettings is one set of server settings the partition runs under.
type routeSettings struct {
	name  string
	about string // as a server's configuration file says it
	apply natstest.Option
}

// shortPings are the route settings measured against the defaults: a
// route given up after 2 pings 2 s apart go unanswered, as the replica
// gives up its own link.
func shortPings(o *server.Options) {
	o.Cluster.PingInterval = 2 * time.Second
	o.Cluster.MaxPingsOut = 2
}

// partitionSettings are the settings -partition-settings chooses from.
var partitionSettings = []routeSettings{
	{"defaults", "the servers' defaults: a route pinged every 30 s (ping_interval 2m, capped for routes), given up after 2 unanswered; write_deadline 10s; clients pinged every 2 min", nil},
	{"deadline", `cluster { write_deadline: "2s" }`, func(o *server.Options) { o.Cluster.WriteDeadline = 2 * time.Second }},
	{"routes", `cluster { ping_interval: "2s", ping_max: 2 }`, shortPings},
	{"clients", `the same, and ping_interval: "2s", ping_max: 2 at the top (every client, gecholog's too)`, func(o *server.Options) {
		shortPings(o)
		o.PingInterval = 2 * time.Second
		o.MaxPingsOut = 2
	}},
}

// partition cuts one node of a three-node cluster off, for each case and
// each settings, and reports what the replicas and gecholog saw.
func (b *bench) partition(ctx context.Context) error {
	var sets []routeSettings
	for _, name := range strings.Split(b.o.partitionSettings, ",") {
		i := slices.IndexFunc(partitionSettings, func(rs routeSettings) bool { return rs.name == name })
		sets = append(sets, partitionSettings[i]) // parseOptions refused any other
	}
	bin, remove, err := b.brokerBinary(ctx)
	if err != nil {
		return err
	}
	defer remove()
	given := "each given every node's address in NATS_URL (a proxy for each, which a cut of the node's clients stalls)"
	if b.o.partitionGiven == "one" {
		given = "each given one node's address (a proxy, which a cut of the node's clients stalls) and learning the\n" +
			"others' from the cluster (-partition-given one)"
	}
	fmt.Fprintf(b.out, "3 nodes in one cluster, each route through a proxy that can stop forwarding without closing anything; the bucket on all 3.\n"+
		"3 replica processes of the broker binary (%s),\n%s.\n"+
		"gecholog beside each node (connected to it directly) sends request contexts (a response context with 200 every\n"+
		"5th) 10 ms apart, each lost when unanswered within %v.\n"+
		"The cut-off node leads the bucket's stream, or neither it nor the meta group; its routes stall (routes), and the links\n"+
		"of the replicas that reach it too (routes+replica). %v after the cut it heals. 300 ms in, gecholog on the cut-off node\n"+
		"reports %s failing, 1 s in gecholog on the majority %s, each sent again until a replica answers (10 tries at most:\n"+
		"a node hands a call to any replica of the queue group, behind a stalled route or not).\n"+
		"Times from the cut, median/max of %d runs; '-': not within the partition.\n",
		bin, given, partitionCallWait, b.o.partitionTime, cutSideRouter, partitionRouter, b.o.partitionRuns)
	for _, rs := range sets {
		fmt.Fprintf(b.out, "\n%s: %s\n", rs.name, rs.about)
		var idle, pings, conns float64
		var n int
		var bucket, calls []string
		for _, pc := range partitionCases {
			if !slices.Contains(strings.Split(b.o.partitionCases, ","), pc.key()) {
				continue
			}
			var runs []partitionResult
			for range b.o.partitionRuns {
				res, err := b.partitionRun(ctx, bin, pc, rs)
				if ctx.Err() != nil {
					return nil
				}
				if err != nil {
					return fmt.Errorf("%s, %s: %w", rs.name, pc, err)
				}
				runs = append(runs, res)
				idle += res.idleRouteBytes
				pings += res.idleRoutePings
				conns += float64(res.routeConns)
				n++
			}
			bk, cl := partitionRows(pc, runs)
			bucket, calls = append(bucket, bk), append(calls, cl)
		}
		fmt.Fprintf(b.out, "%-33s %9s %9s %12s %9s %11s %11s %9s\n", "cut-off node, what is cut", "stale", "moved",
			"others moved", "leader", "routes shut", "all hold", "copies")
		fmt.Fprint(b.out, strings.Join(bucket, ""))
		fmt.Fprintf(b.out, "%-33s %14s %14s %11s %24s %12s\n", "", "lost cut side", "lost majority", "after heal", "the cut side's report", "writes lost")
		fmt.Fprint(b.out, strings.Join(calls, ""))
		fmt.Fprintf(b.out, "idle routes: %.0f bytes/s, %.1f PINGs/s, over %.0f route connections, in 4 s before the cut (mean of %d runs)\n",
			idle/float64(n), pings/float64(n), conns/float64(n), n)
	}
	fmt.Fprintln(b.out, "\nstale: the replica on the cut-off node logs that its bucket does not answer (/readyz 503, broker_bucket_reachable 0);")
	fmt.Fprintln(b.out, "moved: it reconnected to another node; others moved: the other replicas' moves from a node of the majority, all runs; leader: a node of the majority")
	fmt.Fprintln(b.out, "leads the bucket; routes shut: the cut-off node holds no route; all hold: every replica holds the majority's disable,")
	fmt.Fprintln(b.out, "'held' already at the heal, else from the heal; copies: from the heal until the 3 nodes' copies of the bucket have the")
	fmt.Fprintln(b.out, "same last sequence. lost: calls and reports unanswered during the partition, lost/sent, through the cut-off node and")
	fmt.Fprintln(b.out, "through the majority's, and through any in the 2 s after the heal; the cut side's report: unanswered, or when its")
	fmt.Fprintln(b.out, "write landed; writes lost: answered disables not in the bucket after the heal.")
	return nil
}

// partitionRows are a case's rows of the two tables: the bucket's and
// the calls'.
func partitionRows(pc partitionCase, rs []partitionResult) (bucket, calls string) {
	pick := func(f func(partitionResult) time.Duration) string {
		var ds []time.Duration
		for _, r := range rs {
			ds = append(ds, f(r))
		}
		return fmtSpan(ds)
	}
	held, moves := 0, 0
	var agreed []time.Duration
	var lost [2][2]int
	var after [2]int
	var writes int
	landings := map[string]int{}
	for _, r := range rs {
		if r.heldAtHeal {
			held++
		} else {
			agreed = append(agreed, r.agreed)
		}
		moves += r.majorityMoves
		for side := range 2 {
			for j := range 2 {
				lost[side][j] += r.calls[side][j] + r.reports[side][j]
			}
			after[side] += r.afterHeal[side]
		}
		writes += r.writesLost
		landings[r.cutReport]++
	}
	hold := fmtSpan(agreed)
	if held > 0 {
		hold = fmt.Sprintf("held %d/%d", held, len(rs))
		if len(agreed) > 0 {
			hold += "+" + fmtSpan(agreed)
		}
	}
	var land []string
	for _, k := range slices.Sorted(maps.Keys(landings)) {
		land = append(land, fmt.Sprintf("%d %s", landings[k], k))
	}
	bucket = fmt.Sprintf("%-33s %9s %9s %12d %9s %11s %11s %9s\n", pc,
		pick(func(r partitionResult) time.Duration { return r.stale }),
		pick(func(r partitionResult) time.Duration { return r.moved }),
		moves,
		pick(func(r partitionResult) time.Duration { return r.elected }),
		pick(func(r partitionResult) time.Duration { return r.routesShut }),
		hold,
		pick(func(r partitionResult) time.Duration { return r.copies }))
	calls = fmt.Sprintf("%-33s %14s %14s %11s %24s %12d\n", pc,
		fmt.Sprintf("%d/%d", lost[0][1], lost[0][0]), fmt.Sprintf("%d/%d", lost[1][1], lost[1][0]),
		fmt.Sprintf("%d/%d", after[1], after[0]), strings.Join(land, ", "), writes)
	return bucket, calls
}

// fmtSpan is the median and the largest of ds in seconds ("2.0/2.1s"),
// a time never reached counting as the largest and shown as '-'.
func fmtSpan(ds []time.Duration) string {
	if len(ds) == 0 {
		return "-"
	}
	ds = slices.Clone(ds)
	slices.SortFunc(ds, func(a, b time.Duration) int {
		switch {
		case a == b:
			return 0
		case a == never:
			return 1
		case b == never:
			return -1
		case a < b:
			return -1
		}
		return 1
	})
	s := func(d time.Duration) string {
		if d == never {
			return "-"
		}
		return fmt.Sprintf("%.1f", d.Seconds())
	}
	med, top := ds[(len(ds)-1)/2], ds[len(ds)-1]
	if len(ds) == 1 || med == top {
		if top == never {
			return "-"
		}
		return s(top) + "s"
	}
	return s(med) + "/" + s(top) + "s"
}

// traffic is gecholog beside each node sending calls back to back, each
// counted by the side it went through and when it was sent.
type traffic struct {
	halt chan struct{}
	wg   sync.WaitGroup
	once sync.Once

	mu             sync.Mutex
	cut, heal      time.Time
	calls, reports [2][2]int // [cut side, majority][sent, lost]
	after          [2]int    // sent, lost
}

func startTraffic(gws []*nats.Conn, k int, subject string) *traffic {
	t := &traffic{halt: make(chan struct{})}
	for i, nc := range gws {
		side := 1
		if i == k {
			side = 0
		}
		t.wg.Go(func() {
			for n := range 100_000 {
				body := []byte(`{"gl_path":"/azure/"}`)
				report := n%5 == 4
				if report {
					body = []byte(`{"gl_path":"/azure/gpt35turbo/","egress_status_code":200}`)
				}
				at := time.Now()
				_, err := nc.Request(subject, body, partitionCallWait)
				t.count(side, report, at, err != nil)
				select {
				case <-t.halt:
					return
				case <-time.After(10 * time.Millisecond): // the calls' pace
				}
			}
		})
	}
	return t
}

func (t *traffic) count(side int, report bool, at time.Time, lost bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	l := 0
	if lost {
		l = 1
	}
	switch {
	case t.cut.IsZero() || at.Before(t.cut):
	case t.heal.IsZero() || at.Before(t.heal):
		c := &t.calls
		if report {
			c = &t.reports
		}
		c[side][0]++
		c[side][1] += l
	case at.Before(t.heal.Add(2 * time.Second)):
		t.after[0]++
		t.after[1] += l
	}
}

// mark sets when the partition began and ended.
func (t *traffic) mark(cut, heal time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cut, t.heal = cut, heal
}

func (t *traffic) stop() {
	t.once.Do(func() { close(t.halt) })
	t.wg.Wait()
}

func (t *traffic) counts() (calls, reports [2][2]int, after [2]int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.calls, t.reports, t.after
}

// waitServing waits until the replica serves and its listener is known.
func (p *brokerProc) waitServing(ctx context.Context) error {
	_, ok := p.waitLogged(ctx, procStartTimeout, func() (time.Time, bool) {
		p.mu.Lock()
		defer p.mu.Unlock()
		return time.Time{}, p.serving && p.addr != ""
	})
	if !ok {
		p.mu.Lock()
		defer p.mu.Unlock()
		return fmt.Errorf("replica %s did not serve within %v: %s", p.id, procStartTimeout, p.last)
	}
	return nil
}

// stopWithin ends the process with SIGTERM, or kills it after d.
func (p *brokerProc) stopWithin(d time.Duration) {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(d):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// saidAt is the own time of the replica's first line with msg after
// since.
func (p *brokerProc) saidAt(msg string, since time.Time) (time.Time, bool) {
	return p.firstEvent(since, func(e logEvent) bool { return e.msg == msg })
}

// reconnectedAway is the own time of the replica's first reconnection,
// after since, to a server other than from.
func (p *brokerProc) reconnectedAway(from string, since time.Time) (time.Time, bool) {
	return p.firstEvent(since, func(e logEvent) bool { return e.msg == reconnectedLine && e.server != from })
}

func (p *brokerProc) firstEvent(since time.Time, match func(logEvent) bool) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range p.events {
		if e.at.After(since) && match(e) {
			return e.at, true
		}
	}
	return time.Time{}, false
}

// servedOn is the server the replica began serving on.
func (p *brokerProc) servedOn() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.servedAt
}

// movesFrom counts the times the replica moved to another server on its
// own from any server but skip.
func (p *brokerProc) movesFrom(skip string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, from := range p.movedFrom {
		if from != skip {
			n++
		}
	}
	return n
}

// disabledAt is the own time of the replica's first line disabling
// router.
func (p *brokerProc) disabledAt(router string) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	at, ok := p.disabled[router]
	return at, ok
}

// partitionCaseKeys lists the cases' keys for the flag's help.
func partitionCaseKeys() string {
	var keys []string
	for _, pc := range partitionCases {
		keys = append(keys, pc.key())
	}
	return strings.Join(keys, ",")
}

// partitionSettingNames lists the settings' names for the flag's help.
func partitionSettingNames() string {
	var names []string
	for _, rs := range partitionSettings {
		names = append(names, rs.name)
	}
	return strings.Join(names, ", ")
}
