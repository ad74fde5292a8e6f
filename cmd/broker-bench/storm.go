package main

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/kv"
)

// storm measures the request path with and without 10,000 failure
// reports a second for one router, in turns: baseline, storm, baseline,
// and so on, ending with a baseline, so that a machine whose speed drifts
// favours neither.
func (b *bench) storm(ctx context.Context) error {
	o := b.o
	f, err := b.startFleet(ctx, o.replicas, broker.DefaultPools(), 10*time.Minute, b.replicaLog)
	if err != nil {
		return err
	}
	defer f.Stop()
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
	writes0 := kvWrites(f)
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
	writes := kvWrites(f) - writes0

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

func writesPerEvent(writes, events int) string {
	if events == 0 {
		return "no disable event"
	}
	return strconv.FormatFloat(float64(writes)/float64(events), 'f', 2, 64)
}
