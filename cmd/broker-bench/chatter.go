package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/standin"
	"github.com/gecholog/broker/replica"
)

// The fleet's chatter: what replica processes cost the bus and the CPU
// while no call comes, and while gecholog's transaction log carries calls
// that no replica answered (the log alone), for fleets of several sizes.

const (
	// chatterTxBytes is the size of a transaction on the log, about.
	chatterTxBytes = 8 << 10
	// chatterTxRate is the transactions a second published on the log.
	chatterTxRate = 1000
	// maxFleet bounds a fleet size of -fleets.
	maxFleet = 100
)

// parseFleets reads -fleets: fleet sizes separated by commas.
func parseFleets(text string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(text, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > maxFleet {
			return nil, fmt.Errorf("-fleets %q: give fleet sizes from 1 to %d, separated by commas", text, maxFleet)
		}
		out = append(out, n)
	}
	return out, nil
}

// chatterRow is one fleet's figures over one condition.
type chatterRow struct {
	replicas      int
	secs          float64
	in, out       int64   // messages into and out of the server
	inB, outB     int64   // their bytes
	stats, statsB int64   // messages heard on the stats subject, and bytes
	cpu           float64 // the replicas' CPU, all together, in seconds
	maxCPU        float64 // the busiest replica's
}

func (r chatterRow) perSec(n int64) float64 { return float64(n) / r.secs }

func (b *bench) chatter(ctx context.Context) error {
	if b.srv == nil {
		return errors.New("-mode chatter reads the embedded server's counts: run it without -server")
	}
	bin, _, cs, done, err := b.fleetSetup(ctx)
	if err != nil {
		return err
	}
	defer done()
	pools := broker.DefaultPools()
	if _, _, err := (configWriter{cs}).write(ctx, pools); err != nil {
		return fmt.Errorf("write the fleet's configuration: %w", err)
	}
	txs := chatterTransactions(pools)
	fmt.Fprintf(b.out, "Replica processes of the broker binary (%s) on one embedded server, the pool %s of %d routers in the fleet's\n"+
		"configuration. Each fleet runs %v, then is measured %v idle (no call), then %v while %d transactions a second\n"+
		"of %d bytes each are published on gecholog's log (%s), as gecholog publishes them, with no call made.\n"+
		"Server messages from its varz (the bench's own subscription to the stats subject taken out); CPU from each\n"+
		"replica's /proc/<pid>/stat (ticks of 10ms).\n\n",
		bin, pools[0].Ingress, len(pools[0].Routers), b.o.warmup, b.o.duration, b.o.duration, chatterTxRate, len(txs[0]), b.loggerSubject())
	var idle, logged []chatterRow
	for _, n := range b.o.fleets {
		if ctx.Err() != nil {
			return nil
		}
		i, l, err := b.chatterFleet(ctx, bin, n, txs)
		if err != nil {
			return err
		}
		idle, logged = append(idle, i), append(logged, l)
	}
	fmt.Fprintf(b.out, "Idle (no calls):\n")
	chatterTable(b, idle, false)
	fmt.Fprintf(b.out, "\nThe transaction log, %d calls/s of %d bytes (no replica answers a call):\n", chatterTxRate, len(txs[0]))
	chatterTable(b, logged, true)
	return nil
}

func chatterTable(b *bench, rows []chatterRow, log bool) {
	fmt.Fprintf(b.out, "%-9s %10s %10s %12s %12s %10s %12s %12s %12s\n", "replicas", "in msgs/s", "out msgs/s", "in KB/s", "out KB/s",
		"stats/s", "stats KB/s", "CPU, all", "per replica")
	for _, r := range rows {
		fmt.Fprintf(b.out, "%-9d %10.0f %10.0f %12.1f %12.1f %10.0f %12.1f %11.1f%% %11.2f%%\n", r.replicas,
			r.perSec(r.in), r.perSec(r.out), r.perSec(r.inB)/1024, r.perSec(r.outB)/1024, r.perSec(r.stats), r.perSec(r.statsB)/1024,
			100*r.cpu/r.secs, 100*r.cpu/r.secs/float64(r.replicas))
	}
	last := rows[len(rows)-1]
	if !log {
		per := 100 * last.cpu / last.secs / float64(last.replicas)
		fmt.Fprintf(b.out, "idle CPU per replica with %d: %.2f%% of a core (target ≤ 0.5%%: %s); busiest replica %.2f%%\n",
			last.replicas, per, targetVerdict(per <= 0.5), 100*last.maxCPU/last.secs)
		return
	}
	first := rows[0]
	one := first.cpu / first.secs / float64(first.replicas) // one replica's, in the smallest fleet
	fmt.Fprintf(b.out, "the log's CPU per replica: %.2f%% of a core with %d replica(s), %.2f%% with %d", 100*one, first.replicas,
		100*last.cpu/last.secs/float64(last.replicas), last.replicas)
	if one > 0 && first.replicas == 1 {
		// One replica alone reads every transaction: what the fleet would
		// spend were each to read them all is that times its size.
		fmt.Fprintf(b.out, "; the fleet of %d spends %.1f × what one replica alone does (each reading all: %d ×)", last.replicas, last.cpu/last.secs/one, last.replicas)
	}
	fmt.Fprintln(b.out)
}

// chatterFleet starts n replica processes, measures them idle and then
// under the transaction log, and stops them.
func (b *bench) chatterFleet(ctx context.Context, bin string, n int, txs [][]byte) (idle, logged chatterRow, err error) {
	procs, stop, err := b.startProcs(ctx, bin, n)
	if err != nil {
		return idle, logged, err
	}
	defer stop()
	var stats, statsB atomic.Int64
	nc, err := b.connect()
	if err != nil {
		return idle, logged, err
	}
	defer nc.Close()
	if _, err := nc.Subscribe(replica.StatsSubject(b.bucket), func(m *nats.Msg) {
		stats.Add(1)
		statsB.Add(int64(len(m.Data)))
	}); err != nil {
		return idle, logged, err
	}
	if err := nc.Flush(); err != nil {
		return idle, logged, err
	}
	select {
	case <-time.After(b.o.warmup):
	case <-ctx.Done():
		return idle, logged, nil
	}
	measure := func(load func(context.Context)) (chatterRow, error) {
		r := chatterRow{replicas: n}
		v0, err := b.srv.Varz(nil)
		if err != nil {
			return r, err
		}
		c0, err := procsCPU(procs)
		if err != nil {
			return r, err
		}
		s0, sb0 := stats.Load(), statsB.Load()
		t0 := time.Now()
		lctx, cancel := context.WithTimeout(ctx, b.o.duration)
		load(lctx)
		<-lctx.Done()
		cancel()
		r.secs = time.Since(t0).Seconds()
		v1, err := b.srv.Varz(nil)
		if err != nil {
			return r, err
		}
		c1, err := procsCPU(procs)
		if err != nil {
			return r, err
		}
		r.stats, r.statsB = stats.Load()-s0, statsB.Load()-sb0
		r.in, r.inB = v1.InMsgs-v0.InMsgs, v1.InBytes-v0.InBytes
		r.out, r.outB = v1.OutMsgs-v0.OutMsgs-r.stats, v1.OutBytes-v0.OutBytes-r.statsB
		for i := range c0 {
			d := (c1[i] - c0[i]).Seconds()
			r.cpu += d
			r.maxCPU = max(r.maxCPU, d)
		}
		return r, nil
	}
	if idle, err = measure(func(context.Context) {}); err != nil {
		return idle, logged, err
	}
	logged, err = measure(func(ctx context.Context) { b.publishLog(ctx, nc, txs) })
	return idle, logged, err
}

// publishLog publishes txs in turn, chatterTxRate a second, until ctx ends.
func (b *bench) publishLog(ctx context.Context, nc *nats.Conn, txs [][]byte) {
	t0 := time.Now()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	sent := 0
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			due := int(now.Sub(t0).Seconds() * chatterTxRate)
			for ; sent < due; sent++ {
				_ = nc.Publish(b.loggerSubject(), txs[sent%len(txs)])
			}
		}
	}
}

// chatterTransactions are a few transactions of about chatterTxBytes
// each, on the pool's routers in turn, with the headers of a rate limit.
func chatterTransactions(pools []broker.Pool) [][]byte {
	var txs [][]byte
	for i, r := range pools[0].Routers {
		f := standin.Finished{Ingress: pools[0].Ingress, Router: r.Path, Latency: time.Duration(20+i) * time.Millisecond,
			Headers: map[string]string{"x-ratelimit-remaining-requests": "900", "x-ratelimit-limit-requests": "1000"}}
		// The payload is logged twice (prompt and completion), with the
		// rest of the transaction around it.
		f.Payload = 1
		base := len(standin.Transaction(f))
		f.Payload = max((chatterTxBytes-base)/2, 1)
		txs = append(txs, standin.Transaction(f))
	}
	return txs
}

// procsCPU is the CPU time, user and system, each process has used.
func procsCPU(procs []*brokerProc) ([]time.Duration, error) {
	out := make([]time.Duration, len(procs))
	for i, p := range procs {
		d, err := procCPU(p.cmd.Process.Pid)
		if err != nil {
			return nil, fmt.Errorf("replica %s: %w", p.id, err)
		}
		out[i] = d
	}
	return out, nil
}

// procCPU reads the CPU time of process pid from /proc/<pid>/stat, which
// counts it in ticks of USER_HZ (100 on every Linux the broker builds for).
func procCPU(pid int) (time.Duration, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	return statCPU(data)
}

// statCPU is utime plus stime of a /proc/<pid>/stat line. The command name
// in parentheses may hold spaces; the fields after it start with the state
// (field 3), so utime (14) and stime (15) are the 12th and 13th.
func statCPU(data []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, errors.New("no command name in /proc stat")
	}
	fields := strings.Fields(string(data[i+1:]))
	if len(fields) < 13 {
		return 0, errors.New("too few fields in /proc stat")
	}
	utime, err1 := strconv.ParseInt(fields[11], 10, 64)
	stime, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, errors.New("utime or stime not a number in /proc stat")
	}
	return time.Duration(utime+stime) * (time.Second / 100), nil
}
