package replica

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/kv"
)

// The budgets' counts across restarts (kv.UsageStore): a replica with a
// router that has a budget reads the bucket's counts before it hears the
// transaction log, so that a call counted before it started is not lost
// and a call heard after is not counted twice, then every second takes
// what the others wrote and writes what it counted beyond it, and once
// more when it stops. A fleet without budgets makes no bucket.

// budgetSyncEvery is how often a replica syncs its counts with the bucket.
const budgetSyncEvery = time.Second

// budgetStore is the replica's side of the bucket: the store, opened
// when a budget first needs it, and what it last read or wrote of each
// router.
type budgetStore struct {
	store  *kv.UsageStore
	stored map[string]storedCount // by key (kv.UsageKey)
	warned map[string]time.Time   // what went wrong, when it was last said
}

type storedCount struct {
	count broker.BudgetCount
	rev   uint64
}

// loadBudgets opens the bucket and takes its counts, at start, when the
// replica's pools give a router a budget. A server without JetStream,
// or one that does not answer in time, leaves the counts at what the
// replica hears.
func (r *Replica) loadBudgets(ctx context.Context) {
	r.budgets = &budgetStore{stored: map[string]storedCount{}, warned: map[string]time.Time{}}
	if len(r.broker.BudgetCounts()) == 0 {
		return
	}
	actx, cancel := context.WithTimeout(ctx, configOpenTimeout)
	defer cancel()
	r.syncBudgets(actx, false)
}

// keepBudgets syncs the counts with the bucket every budgetSyncEvery,
// and once more when the replica stops.
func (r *Replica) keepBudgets(ctx context.Context) {
	t := time.NewTicker(budgetSyncEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), r.cfg.WriteDrainTimeout)
			r.syncBudgets(fctx, true)
			cancel()
			return
		case <-t.C:
			sctx, cancel := context.WithTimeout(ctx, budgetSyncEvery)
			r.syncBudgets(sctx, true)
			cancel()
		}
	}
}

// syncBudgets reads each budget's count from the bucket, takes it, and
// writes the replica's when it holds more (write false: reads only).
func (r *Replica) syncBudgets(ctx context.Context, write bool) {
	counts := r.broker.BudgetCounts()
	if len(counts) == 0 {
		return
	}
	bs := r.budgets
	if bs.store == nil {
		js, err := jetstream.New(r.nc)
		if err == nil {
			bs.store, err = kv.OpenUsage(ctx, js, kv.UsageBucket(r.cfg.Bucket), r.cfg.KVReplicas)
		}
		if err != nil {
			bs.store = nil
			r.warnBudget("open", "cannot open the bucket of budget counts: budgets count only what this replica hears until it can", err,
				slog.String("bucket", kv.UsageBucket(r.cfg.Bucket)))
			return
		}
	}
	now := time.Now()
	for _, c := range counts {
		key := kv.UsageKey(c)
		stored, rev, err := bs.store.GetUsage(ctx, key)
		switch {
		case errors.Is(err, kv.ErrUsageGone):
			r.warnBudget("gone", "the bucket of budget counts is gone (deleted, or JetStream is down): making it again and writing what this replica counted", nil,
				slog.String("bucket", bs.store.Bucket()))
			clear(bs.stored)
			continue
		case err != nil && rev == 0:
			r.warnBudget("read "+key, "cannot read a budget's count from the bucket", err, slog.String("key", key))
			continue
		case err != nil:
			// Not a count: overwritten with this replica's.
			r.warnBudget("bad "+key, "the bucket holds no count for a budget: writing this replica's over it", err, slog.String("key", key))
		default:
			if err := r.broker.MergeBudget(stored, now); err != nil {
				r.warnBudget("bounds "+key, "the bucket's count of a budget is out of bounds: writing this replica's over it", err, slog.String("key", key))
			}
		}
		bs.stored[key] = storedCount{count: stored, rev: rev}
	}
	if !write {
		return
	}
	for _, c := range r.broker.BudgetCounts() {
		key := kv.UsageKey(c)
		was, ok := bs.stored[key]
		if ok && was.count.SameCounts(c) {
			continue
		}
		rev, err := bs.store.PutUsage(ctx, c, was.rev, r.cfg.ID)
		switch {
		case errors.Is(err, kv.ErrConflict):
			continue // another replica wrote: taken at the next sync
		case err != nil:
			r.warnBudget("write "+key, "cannot write a budget's count to the bucket", err, slog.String("key", key))
			continue
		}
		bs.stored[key] = storedCount{count: c, rev: rev}
	}
}

// warnBudget logs one line about the bucket of budget counts, at most once
// a minute for each what.
func (r *Replica) warnBudget(what, msg string, err error, attrs ...any) {
	now := time.Now()
	if last, ok := r.budgets.warned[what]; ok && now.Sub(last) < time.Minute {
		return
	}
	r.budgets.warned[what] = now
	if err != nil {
		attrs = append(attrs, slog.Any("error", err))
	}
	r.log.Warn(msg, attrs...)
}
