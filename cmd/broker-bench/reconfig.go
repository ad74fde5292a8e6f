package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/kv"
)

// A change of the fleet's configuration, measured on replica processes
// of the broker binary, which follow the <bucket>_config bucket as a
// deployment does (BROKER_CONFIG_SOURCE=fleet):
//   - one change at a time: from the compare-and-set write that `broker
//     config set` makes to every replica choosing by the new revision;
//   - changes under load: the -mode throughput load, in runs with changes
//     and without taken in turns, and every answer checked.

// reconfigIngress is the pool every revision changes.
const reconfigIngress = "/azure/"

// configWriter writes revisions as `broker config set` does: it reads the
// newest, then writes with a compare-and-set on the revision it read.
type configWriter struct {
	cs *kv.ConfigStore
}

// write stores pools as a new revision and returns it, with the time the
// write was made (just before the compare-and-set).
func (w configWriter) write(ctx context.Context, pools []broker.Pool) (rev uint64, at time.Time, err error) {
	l, err := w.cs.Latest(ctx)
	if err != nil {
		return 0, at, err
	}
	doc := kv.NewFleetConfig(pools, broker.Policy{DisabledTime: 10 * time.Minute}, 0)
	doc.By, doc.Source = "broker-bench", "broker-bench -mode reconfig"
	var prev *kv.FleetConfig
	if l.Revision != 0 {
		prev = &l.Config
	}
	at = time.Now()
	rev, err = w.cs.Write(ctx, doc, l.Revision, prev)
	return rev, at, err
}

// reconfigPool is the pool /azure/ over routers, each of weight.
func reconfigPool(routers []broker.Router) []broker.Pool {
	return []broker.Pool{{Ingress: reconfigIngress, Routers: slices.Clone(routers)}}
}

// applyTimeout bounds how long the bench waits for a replica to apply a
// revision before it counts the change as not applied.
const applyTimeout = 5 * time.Second

func (b *bench) reconfig(ctx context.Context) error {
	o := b.o
	bin, nc, cs, done, err := b.fleetSetup(ctx)
	if err != nil {
		return err
	}
	defer done()
	w := configWriter{cs}
	// The replicas find a revision and follow it.
	first := []broker.Router{{Path: "/azure/start/", Weight: 1}}
	if _, _, err := w.write(ctx, reconfigPool(first)); err != nil {
		return fmt.Errorf("write the first revision: %w", err)
	}
	procs, stop, err := b.startProcs(ctx, bin, o.replicas)
	if err != nil {
		return err
	}
	defer stop()
	client := &http.Client{Timeout: time.Second}
	defer client.CloseIdleConnections()

	fmt.Fprintf(b.out, "%d replica processes of the broker binary (%s), following the fleet's configuration in bucket %s.\n",
		o.replicas, bin, kv.ConfigBucket(b.bucket))
	fmt.Fprintf(b.out, "Each change is written as `broker config set` writes it: kv.ConfigStore.Write, a compare-and-set on the revision read.\n\n")
	if err := b.reconfigOneByOne(ctx, w, nc, procs, client); err != nil || ctx.Err() != nil {
		return err
	}
	return b.reconfigUnderLoad(ctx, w, procs, client)
}

// reconfigOneByOne times o.changes changes, one at a time. Each revision
// holds /azure/ over a router of its own, so that an answer names the
// revision that chose it.
func (b *bench) reconfigOneByOne(ctx context.Context, w configWriter, nc *nats.Conn, procs []*brokerProc, client *http.Client) error {
	o := b.o
	checks := 3 * len(procs)
	fmt.Fprintf(b.out, "One at a time: %d changes, each a revision whose /azure/ has only a router of its own, /azure/cN/.\n", o.changes)
	fmt.Fprintf(b.out, "A replica chooses by a revision once it has swapped its table: the measure is when the bench sees each replica's\n")
	fmt.Fprintf(b.out, "/metrics show broker_config_revision N, asked every %v from outside (an upper bound: the replica sets it just\n", metricsPoll)
	fmt.Fprintf(b.out, "after the swap); its log line %q, timed by the replica itself, is the lower bound.\n", appliedLine)
	fmt.Fprintf(b.out, "Then %d request contexts through the queue group must all be answered with /azure/cN/, as the gateway sees it.\n\n", checks)
	var first, last, shown []time.Duration
	lost, wrong := 0, 0
	for i := 1; i <= o.changes && ctx.Err() == nil; i++ {
		router := fmt.Sprintf("/azure/c%d/", i)
		rev, t0, err := w.write(ctx, reconfigPool([]broker.Router{{Path: router, Weight: 1}}))
		if err != nil {
			return fmt.Errorf("change %d: %w", i, err)
		}
		seen, ok := waitRevision(ctx, client, procs, rev, applyTimeout)
		if !ok {
			lost++
			continue
		}
		var applied []time.Duration
		for _, p := range procs {
			at, ok := p.waitApplied(ctx, rev, applyTimeout)
			if !ok {
				return fmt.Errorf("change %d: replica %s shows revision %d on /metrics but logged no %q", i, p.id, rev, appliedLine)
			}
			applied = append(applied, at.Sub(t0))
		}
		first = append(first, slices.Min(applied))
		last = append(last, slices.Max(applied))
		shown = append(shown, slices.MaxFunc(seen, time.Time.Compare).Sub(t0))
		for range checks {
			m, err := nc.Request(b.subject, []byte(`{"gl_path":"/azure/"}`), time.Second)
			if err != nil || routerIn(m.Data) != router {
				wrong++
			}
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	fmt.Fprintf(b.out, "%-60s %9s %9s %9s\n", "from the write", "p50", "p99", "max")
	for _, s := range []struct {
		name string
		d    []time.Duration
	}{
		{"first replica applies it (its log line)", first},
		{"last replica applies it (its log line)", last},
		{"last replica shows it on /metrics (seen from outside)", shown},
	} {
		slices.Sort(s.d)
		r := benchResult{lat: s.d}
		fmt.Fprintf(b.out, "%-60s %9s %9s %9s\n", s.name, fmtLatency(r.pct(0.5)), fmtLatency(r.pct(0.99)), fmtLatency(r.pct(1)))
	}
	r := benchResult{lat: shown}
	fmt.Fprintf(b.out, "\nchanges %d, not applied by every replica within %v %d, answers through the queue group not the new router %d of %d (target 0: %s)\n",
		len(shown)+lost, applyTimeout, lost, wrong, len(shown)*checks, targetVerdict(wrong == 0))
	fmt.Fprintf(b.out, "every replica chooses by the new revision: p50 %s, p99 %s (target p99 ≤ 100ms: %s)\n\n",
		fmtLatency(r.pct(0.5)), fmtLatency(r.pct(0.99)), targetVerdict(lost == 0 && len(shown) > 0 && r.pct(0.99) <= 100*time.Millisecond))
	return nil
}

// routerIn is the gl_path of a request context's reply; "" for none.
func routerIn(data []byte) string {
	var r struct {
		GLPath string `json:"gl_path"`
	}
	if json.Unmarshal(data, &r) != nil {
		return ""
	}
	return r.GLPath
}

// loadChange is one change written under load.
type loadChange struct {
	routers []broker.Router
	removed string // the router this change removes; "" none
	what    string
	rev     uint64
	at      time.Time // written
}

// loadChanges is n changes of /azure/ from three routers: in turn, a
// router added, the oldest removed, the weights changed. A removed
// router never comes back, so an answer with it is always out of date.
func loadChanges(n int) (start []broker.Router, changes []loadChange) {
	start = []broker.Router{{Path: "/azure/a1/", Weight: 1}, {Path: "/azure/a2/", Weight: 1}, {Path: "/azure/a3/", Weight: 1}}
	cur := slices.Clone(start)
	for k := 1; k <= n; k++ {
		c := loadChange{}
		switch {
		case k%3 == 1 || len(cur) < 2:
			r := broker.Router{Path: fmt.Sprintf("/azure/n%d/", k), Weight: 1}
			cur = append(cur, r)
			c.what = "add " + r.Path
		case k%3 == 2:
			c.removed = cur[0].Path
			cur = slices.Delete(cur, 0, 1)
			c.what = "remove " + c.removed
		default:
			for i := range cur {
				cur[i].Weight = 1 + (i+k)%3
			}
			c.what = "weights"
		}
		c.routers = slices.Clone(cur)
		changes = append(changes, c)
	}
	return start, changes
}

// suspect is a call answered with a router that a change written before
// the answer removed: wrong if every replica had applied the change when
// the call was sent.
type suspect struct {
	sent   time.Time
	change int // index in the changes
}

// nearChange is how close to a change's write a failed call counts as
// near it, in the report.
const nearChange = 100 * time.Millisecond

// maxSuspects bounds the suspect calls kept; more count as wrong.
const maxSuspects = 1 << 20

// reconfigUnderLoad runs the throughput load in runs with changes and
// without, taken in turns, and checks every answer.
func (b *bench) reconfigUnderLoad(ctx context.Context, w configWriter, procs []*brokerProc, client *http.Client) error {
	o := b.o
	start, changes := loadChanges(o.loadChanges)
	rev, _, err := w.write(ctx, reconfigPool(start))
	if err != nil {
		return err
	}
	if _, ok := waitRevision(ctx, client, procs, rev, applyTimeout); !ok {
		return fmt.Errorf("the replicas did not apply revision %d within %v", rev, applyTimeout)
	}
	conns, closeConns, err := b.connectN(o.conns)
	if err != nil {
		return err
	}
	defer closeConns()

	// Every router any revision has is a valid answer; a router a change
	// already written removed is a suspect, judged once the run is over.
	valid := map[string]int{} // router → the change removing it; -1 none
	for _, r := range start {
		valid[r.Path] = -1
	}
	for i, c := range changes {
		for _, r := range c.routers {
			if _, ok := valid[r.Path]; !ok {
				valid[r.Path] = -1
			}
		}
		if c.removed != "" {
			valid[c.removed] = i
		}
	}
	var written atomic.Int64 // changes written so far
	var mu sync.Mutex
	var suspects []suspect
	var wrongs []string      // the first few wrong replies, for the report
	var failedAt []time.Time // when each call that got no reply in time was sent
	overflow := 0
	msg := []byte(`{"gl_path":"/azure/"}`)
	call := func(nc *nats.Conn) error {
		sent := time.Now()
		m, err := nc.Request(b.subject, msg, o.timeout)
		if err != nil {
			mu.Lock()
			if len(failedAt) < maxSuspects {
				failedAt = append(failedAt, sent)
			}
			mu.Unlock()
			return err
		}
		removedBy, ok := valid[routerIn(m.Data)]
		if !ok {
			mu.Lock()
			if len(wrongs) < 5 {
				wrongs = append(wrongs, string(m.Data))
			}
			mu.Unlock()
			return errWrongReply
		}
		if removedBy >= 0 && int64(removedBy) < written.Load() {
			mu.Lock()
			if len(suspects) < maxSuspects {
				suspects = append(suspects, suspect{sent, removedBy})
			} else {
				overflow++
			}
			mu.Unlock()
		}
		return nil
	}

	run, settle := b.rounds()
	fmt.Fprintf(b.out, "Under load: %d callers on %d connections send request contexts %s with nc.Request (a call without a reply\n", o.callers, o.conns, msg)
	fmt.Fprintf(b.out, "within %v is an error), %v in all with changes and %v without, in %d runs of %v taken in turns,\n", o.timeout, o.duration, o.duration, o.rounds, run)
	fmt.Fprintf(b.out, "after a %v warm-up and %v to settle before each run; %d changes (a router added, the oldest removed, the weights\n", o.warmup, settle, len(changes))
	fmt.Fprintf(b.out, "changed, in turn) are spread over the runs with changes. A call answered with a removed router is wrong when it was\n")
	fmt.Fprintf(b.out, "sent after every replica had logged applying the removal (no answer says which replica chose, so a call sent while\n")
	fmt.Fprintf(b.out, "the change was still reaching the replicas is not judged).\n\n")
	b.closedLoop(ctx, conns, call, o.warmup, 0)
	var plain, changed benchResult
	var rates, p99s []float64
	var writeErr error
	for round := 1; round <= o.rounds && ctx.Err() == nil; round++ {
		// This round's share of the changes, spread evenly over its run.
		from, to := len(changes)*(round-1)/o.rounds, len(changes)*round/o.rounds
		withChanges := func() benchResult {
			var wg sync.WaitGroup
			begin := time.Now().Add(settle)
			wg.Go(func() {
				for i := from; i < to; i++ {
					due := begin.Add(run * time.Duration(i-from+1) / time.Duration(to-from+1))
					select {
					case <-time.After(time.Until(due)):
					case <-ctx.Done():
						return
					}
					// Counted as written before the write: a call answered
					// with the router from now on is a suspect.
					written.Store(int64(i + 1))
					rev, at, err := w.write(ctx, reconfigPool(changes[i].routers))
					if err != nil {
						mu.Lock()
						writeErr = fmt.Errorf("change %d (%s): %w", i+1, changes[i].what, err)
						mu.Unlock()
						return
					}
					changes[i].rev, changes[i].at = rev, at
				}
			})
			r := b.closedLoop(ctx, conns, call, settle, run)
			wg.Wait()
			return r
		}
		var n, c benchResult
		if round%2 == 1 {
			n = b.closedLoop(ctx, conns, call, settle, run)
			c = withChanges()
		} else {
			c = withChanges()
			n = b.closedLoop(ctx, conns, call, settle, run)
		}
		rates = append(rates, c.rate()/n.rate())
		p99s = append(p99s, float64(c.pct(0.99))/float64(n.pct(0.99)))
		plain.merge(n)
		changed.merge(c)
	}
	if ctx.Err() != nil {
		return nil
	}
	if writeErr != nil {
		return writeErr
	}
	// When every replica had applied each change, by its own log line.
	applied := make([]time.Time, len(changes))
	var reach []time.Duration
	notApplied := 0
	for i, c := range changes {
		if c.rev == 0 {
			notApplied++ // not written: the run ended first
			continue
		}
		for _, p := range procs {
			at, ok := p.waitApplied(ctx, c.rev, applyTimeout)
			if !ok {
				notApplied++
				applied[i] = time.Time{}
				break
			}
			if at.After(applied[i]) {
				applied[i] = at
			}
		}
		if !applied[i].IsZero() {
			reach = append(reach, applied[i].Sub(c.at))
		}
	}
	late, unjudged := overflow, 0
	for _, s := range suspects {
		if a := applied[s.change]; !a.IsZero() && s.sent.After(a) {
			late++
		} else {
			unjudged++
		}
	}
	slices.Sort(plain.lat)
	slices.Sort(changed.lat)
	slices.Sort(reach)
	fmt.Fprintf(b.out, "%-26s %12s %10s %10s %10s %8s\n", "", "requests/s", "p50", "p99", "p99.9", "errors")
	b.row("without changes", plain)
	b.row(fmt.Sprintf("with %d changes", len(changes)-notApplied), changed)
	fmt.Fprintln(b.out)
	ap := benchResult{lat: reach}
	fmt.Fprintf(b.out, "every replica applied each change (its log line) after the write: p50 %s, max %s; not applied within %v: %d\n",
		fmtLatency(ap.pct(0.5)), fmtLatency(ap.pct(1)), applyTimeout, notApplied)
	near := 0 // errors sent within nearChange of a change being written
	for _, f := range failedAt {
		if slices.ContainsFunc(changes, func(c loadChange) bool {
			return !c.at.IsZero() && f.After(c.at.Add(-nearChange)) && f.Before(c.at.Add(nearChange))
		}) {
			near++
		}
	}
	fmt.Fprintf(b.out, "calls without a reply in time, in both conditions: %d, of which sent within %v of a change's write: %d\n", len(failedAt), nearChange, near)
	if len(wrongs) > 0 {
		fmt.Fprintf(b.out, "wrong replies (a router no revision has), the first: %q\n", wrongs)
	}
	fmt.Fprintf(b.out, "calls answered with a removed router while the change was reaching the replicas: %d (allowed)\n", unjudged)
	tr := changed.rate() / plain.rate()
	lr := float64(changed.pct(0.99)) / float64(plain.pct(0.99))
	fmt.Fprintf(b.out, "with / without changes, round by round: throughput %s; p99 %s\n", spread(rates), spread(p99s))
	fmt.Fprintf(b.out, "errors with changes %d (target 0: %s); calls answered with a router after every replica applied its removal %d (target 0: %s)\n",
		changed.errors, targetVerdict(changed.errors == 0), late, targetVerdict(late == 0 && notApplied == 0))
	fmt.Fprintf(b.out, "with / without changes: throughput %.3f (target ≥ 0.95: %s), p99 %.3f (target ≤ 1.20: %s)\n",
		tr, targetVerdict(tr >= 0.95), lr, targetVerdict(lr <= 1.20))
	return nil
}
