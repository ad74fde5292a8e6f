package ops

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/safetext"
	"github.com/gecholog/broker/kv"
	"github.com/gecholog/broker/replica"
)

const (
	// MaxFor is the longest disable by hand with an end: longer is surely
	// a typo, and a disable meant to be that long should be lifted by hand
	// anyway.
	MaxFor = 365 * 24 * time.Hour
	// DefaultReason is a manual disable's reason when none is given.
	DefaultReason = "disabled by hand"
)

const (
	// enableWrites bounds how many times enable writes its delete marker
	// on a key that holds no live record while other writes keep coming
	// first (replicas disabling and releasing a flapping router, another
	// operator): the last of those writes then decides.
	enableWrites = 5
	// enablePauseFirst and enablePauseMost pace those writes (see
	// backoff): a retry at once would lose again in step with a writer
	// that keeps writing.
	enablePauseFirst = 25 * time.Millisecond
	enablePauseMost  = 200 * time.Millisecond
)

// Disable is a disable by hand.
type Disable struct {
	Router string
	// For is how long; 0 lasts until someone enables the router.
	For time.Duration
	// Reason and By are shown by status; empty ones get DefaultReason and
	// Operator's name.
	Reason, By string
	// Force disables a router no pool has (for replicas with other pools).
	Force bool
}

// DisableRouter writes a manual record for d.Router, replacing whatever
// the key holds, so that every replica stops choosing it until d.For ends
// or someone enables it.
func DisableRouter(ctx context.Context, t Target, d Disable, getenv func(string) string, stdout io.Writer) error {
	if err := t.checkRouter(d.Router, d.Force); err != nil {
		return err
	}
	if strings.TrimSpace(d.Reason) == "" {
		d.Reason = DefaultReason
	}
	if strings.TrimSpace(d.By) == "" {
		d.By = Operator(getenv)
	}
	rec := broker.Record{Router: d.Router, Reason: d.Reason, At: time.Now(), By: d.By, Manual: true}
	if d.For > 0 {
		rec.Until = rec.At.Add(d.For)
	}
	// Announced when the bucket does not answer within a second, as a
	// replica announces a disable before its write: the replicas this
	// command reaches hold the router out at once, while a cluster
	// electing the bucket's leader holds the write up, for
	// broker.DefaultAnnouncementHold at most unless the bucket takes it.
	// A bucket that answers takes the write, and its news tells them.
	announce := func(nc *nats.Conn) {
		_ = kv.AnnounceOn(nc, replica.NewsSubject(t.Bucket), "broker disable", rec) // the write still tells them
	}
	return t.NATS.Scrub(t.openBucket(ctx, "disable", announce, func(ctx context.Context, b bucket) error {
		f, listening := hearFleet(b.nc, t.Bucket), time.Now()
		defer f.stop()
		f.hearTaken(d.Router)
		prev, prevErr := b.store.Get(ctx, d.Router)
		now := time.Now()
		// Put, not compare-and-set: the operator means "whatever is there
		// now". Replicas only ever create or compare-and-set, so one racing
		// with this write loses and adopts the manual record.
		rev, err := b.store.Put(ctx, rec)
		if err != nil {
			return err
		}
		until := untilText(rec.Until) // as of the write, not of the replicas' word
		where, confirmed := f.confirm(ctx, rev, broker.Manual, listening).where(b.store.Bucket())
		line := fmt.Sprintf("disabled %s %s %s; manual, by %s: %s", d.Router, where, until, d.By, d.Reason)
		switch {
		case prevErr == nil && prev.Record.ActiveAt(now):
			line += "; replaces " + describe(prev.Record)
		case prevErr != nil && !errors.Is(prevErr, kv.ErrNotFound):
			line += "; replaces a record that could not be read"
		}
		fmt.Fprintln(stdout, natsconn.OneLine(line+confirmed))
		return nil
	}))
}

// EnableRouter deletes router's key, so that every replica chooses it
// again at once. Any router path may be enabled, pool member or not:
// lifting a disable is always safe, and status lists records of routers
// no pool knows.
//
// A key that is no router path, even one NATS's KV API refuses (see
// kv.ErrInvalidKey), is purged when the bucket holds it: status lists
// every key, and each must be removable without a raw purge.
func EnableRouter(ctx context.Context, t Target, router string, stdout io.Writer) error {
	if !broker.ValidPath(router) {
		return t.withBucket(ctx, "enable", func(ctx context.Context, b bucket) error {
			removed, err := b.store.PurgeKey(ctx, router)
			if err != nil {
				return err
			}
			if !removed {
				return fmt.Errorf("router %q: a router path starts and ends with / and holds only letters, digits and /, and bucket %s holds no such key either",
					safetext.Clip(router, safetext.MaxShown), b.store.Bucket())
			}
			fmt.Fprintln(stdout, natsconn.OneLine(fmt.Sprintf("removed key %s from bucket %s: no router path, so every replica ignored it",
				safetext.Clip(router, safetext.MaxShown), b.store.Bucket())))
			return nil
		})
	}
	return t.withBucket(ctx, "enable", func(ctx context.Context, b bucket) error {
		f, listening := hearFleet(b.nc, t.Bucket), time.Now()
		defer f.stop()
		f.hearTaken(router)
		prev, err := b.store.Get(ctx, router)
		if errors.Is(err, kv.ErrNotFound) {
			found, rev, rerr := release(ctx, b.store, router)
			if rerr != nil {
				return rerr
			}
			if found == nil {
				_, confirmed := f.confirm(ctx, rev, broker.Enabled, listening).where(b.store.Bucket())
				fmt.Fprintln(stdout, natsconn.OneLine(fmt.Sprintf("%s is already enabled: bucket %s holds no record for it%s", router, b.store.Bucket(), confirmed)))
				return nil
			}
			prev, err = *found, nil // a write that came first left a live record: remove it
		}
		what := "a record that could not be read"
		if err == nil {
			what = describe(prev.Record)
			if !prev.Record.ActiveAt(time.Now()) {
				what = "an ended " + strings.TrimPrefix(what, "the ")
			}
		}
		// Deleting, whatever the revision: every replica's watcher hears the
		// delete and re-enables the router at once.
		rev, err := b.store.Delete(ctx, router, 0)
		if err != nil {
			return err
		}
		where, confirmed := f.confirm(ctx, rev, broker.Enabled, listening).where(b.store.Bucket())
		fmt.Fprintln(stdout, natsconn.OneLine(fmt.Sprintf("enabled %s %s; removed %s%s", router, where, what, confirmed)))
		return nil
	})
}

// release writes a delete marker on router's key, which held no live
// record when read, keeping the memo: a replica that holds the router out
// on another's announcement alone, which the bucket never confirmed (see
// docs/security.md), takes the bucket's newer word at once.
//
// The marker is written at the revision read. When another write comes
// first, or the member of the stream that answered the read was behind
// its leader, release pauses and reads again, up to enableWrites writes.
// It returns the live record it read, if any, for the caller to remove;
// otherwise the revision the replicas are to hold: its marker's or, when
// every write lost, that of the last write that beat it.
func release(ctx context.Context, store *kv.Store, router string) (found *broker.Entry, rev uint64, err error) {
	pace := backoff{first: enablePauseFirst, most: enablePauseMost}
	for n := 0; ; n++ {
		last, live, err := store.Latest(ctx, router)
		switch {
		case err != nil:
			return nil, 0, err
		case live:
			return &last, 0, nil
		case n == enableWrites:
			return nil, last.Revision, nil // every write lost, and the last to win left no live record
		}
		memo := last.Record
		memo.Router = router
		rev, err := store.Release(ctx, memo, last.Revision)
		if !errors.Is(err, kv.ErrConflict) {
			return nil, rev, err
		}
		if n+1 == enableWrites {
			continue // read what beat the last write, at once
		}
		if err := pace.wait(ctx, n); err != nil {
			return nil, 0, fmt.Errorf("enable %s: other writes came first %d times; stopped before writing again: %w", router, n+1, err)
		}
	}
}

// checkRouter refuses a router that no pool has, unless forced: replicas
// ignore records of routers they do not serve, so such a disable would do
// nothing and most likely is a typo.
func (t Target) checkRouter(router string, force bool) error {
	var routers []string
	for _, p := range t.Pools {
		for _, r := range p.Routers {
			if r.Path == router {
				return nil
			}
			if !slices.Contains(routers, r.Path) {
				routers = append(routers, r.Path)
			}
		}
	}
	if force {
		return nil
	}
	from := "the default pool (set -pools or BROKER_POOLS for others)"
	if t.PoolsFile != "" {
		from = "pools file " + t.PoolsFile
	}
	return fmt.Errorf("router %q is in no pool: the routers of %s are %s; give --force to disable it anyway",
		router, from, strings.Join(routers, ", "))
}

// describe names a record for the confirming lines.
func describe(r broker.Record) string {
	kind := "automatic"
	if r.Manual {
		kind = "manual"
	}
	s := fmt.Sprintf("the %s disable by %s (%s", kind, r.By, r.Reason)
	if !r.Until.IsZero() {
		s += ", until " + r.Until.UTC().Format(time.RFC3339)
	}
	return s + ")"
}

func untilText(until time.Time) string {
	if until.IsZero() {
		return "until enabled by hand"
	}
	return fmt.Sprintf("for %v, until %s", time.Until(until).Round(time.Second), until.UTC().Format(time.RFC3339))
}

// Operator names the person running a command: $USER@hostname.
func Operator(getenv func(string) string) string {
	user := getenv("USER")
	if user == "" {
		user = getenv("LOGNAME")
	}
	if user == "" {
		user = "operator"
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		return user + "@" + h
	}
	return user
}
