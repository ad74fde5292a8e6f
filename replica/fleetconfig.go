package replica

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gecholog/broker/kv"
)

// The fleet's configuration (docs/operating.md, "The fleet's
// configuration"): the replica's own pools and policy settings form a
// document. At start:
//   - an empty bucket gets the replica's document (a compare-and-set: of
//     replicas starting at once, one writes and the others follow it);
//   - a bucket whose newest revision configures the same is followed;
//   - a replica given settings (a pools file, DISABLED_TIME, ...; see
//     Config.Given) whose document differs and was never written (its
//     hash is not among the revision's files) writes it as a new
//     revision: an edited pools.json or DISABLED_TIME takes effect on
//     restart;
//   - otherwise (settings written before, or none given) the replica
//     follows the bucket, and when it was given settings says once,
//     loudly, that they are out of date.
// A replica given nothing never writes over the bucket: one started
// without its pools file mounted follows the fleet rather than bring
// back the default pools.
// Then every replica follows every new valid revision; an invalid one is
// refused and the last good one kept.

// ConfigState is what the replica runs by, for the status page, /metrics
// and `broker status`.
type ConfigState struct {
	Revision uint64 // the revision in force; 0: its own settings, no bucket
	Refused  string // "refused revision N: why"; "" when none is
	Note     string // the file out of date, the bucket gone, no JetStream
}

type fleetConfig struct {
	mu    sync.Mutex
	state ConfigState
	hash  string // the content hash in force
}

func (f *fleetConfig) get() ConfigState {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state
}

// Config returns the configuration the replica runs by.
func (r *Replica) Config() ConfigState { return r.conf.get() }

// own is the replica's own document.
func (r *Replica) own() kv.FleetConfig {
	c := kv.NewFleetConfig(r.cfg.Pools, r.cfg.Policy, r.cfg.InFlightBound)
	c.By = r.cfg.ID
	c.Source = "the replica's default settings"
	if given := r.given(); given != "" {
		c.Source = "the replica's " + given
	}
	return c
}

// given says which settings the replica was given: "" for none.
func (r *Replica) given() string {
	var each []string
	if r.cfg.PoolsFile != "" {
		each = append(each, "pools file "+r.cfg.PoolsFile)
	}
	for _, g := range r.cfg.Given {
		if g != "BROKER_POOLS" || r.cfg.PoolsFile == "" {
			each = append(each, g)
		}
	}
	return strings.Join(each, ", ")
}

// resolveConfig decides by the rule above what the replica starts with,
// and sets r.cfg's pools, policy and bound to it.
func (r *Replica) resolveConfig(ctx context.Context, cs *kv.ConfigStore) error {
	own := r.own()
	own.Files = []string{own.Hash()}
	for attempt := 0; attempt < 5; attempt++ {
		latest, err := cs.Latest(ctx)
		if err != nil {
			return err
		}
		var rev uint64
		switch {
		case latest.Revision == 0 || latest.Deleted:
			rev, err = cs.Write(ctx, own, latest.Revision, nil)
			if err == nil {
				r.log.Info("wrote the fleet's configuration: the bucket had none", slog.Uint64("revision", rev), slog.String("source", own.Source))
			}
		case latest.Err != nil:
			r.refuse(latest)
			if r.given() == "" {
				r.log.Warn("starting with this replica's own settings until the bucket holds a valid revision")
				return nil
			}
			rev, err = cs.Write(ctx, own, latest.Revision, nil)
		case latest.Config.Same(own):
			return r.follow(latest)
		case r.given() != "" && !slices.Contains(latest.Config.Files, own.Hash()):
			rev, err = cs.Write(ctx, own, latest.Revision, &latest.Config)
			if err == nil {
				r.log.Warn("this replica's settings differ from the fleet's configuration and were never written: wrote them as a new revision; every replica follows it",
					slog.String("settings", r.given()), slog.Uint64("revision", rev), slog.Uint64("was", latest.Revision))
			}
		default:
			if given := r.given(); given != "" {
				note := fmt.Sprintf("this replica's %s: out of date, following revision %d of the fleet's configuration (broker config show)", given, latest.Revision)
				r.log.Warn(note)
				r.conf.mu.Lock()
				r.conf.state.Note = note
				r.conf.mu.Unlock()
			}
			return r.follow(latest)
		}
		if errors.Is(err, kv.ErrConflict) {
			continue // another replica wrote first: decide again
		}
		if err != nil {
			return err
		}
		r.setConfig(rev, own.Hash())
		return nil
	}
	return errors.New("the fleet's configuration kept changing while this replica started")
}

// follow takes the revision e at start.
func (r *Replica) follow(e kv.ConfigEntry) error {
	pools, pol, bound, err := e.Config.Settings()
	if err != nil {
		return err
	}
	r.cfg.Pools, r.cfg.Policy, r.cfg.InFlightBound = pools, pol, bound
	r.setConfig(e.Revision, e.Config.Hash())
	return nil
}

func (r *Replica) setConfig(rev uint64, hash string) {
	r.conf.mu.Lock()
	defer r.conf.mu.Unlock()
	if strings.HasPrefix(r.conf.state.Note, "the fleet's configuration") {
		r.conf.state.Note = "" // a deleted key or bucket holds a revision again
	}
	r.conf.state.Revision, r.conf.state.Refused, r.conf.hash = rev, "", hash
}

func (r *Replica) refuse(e kv.ConfigEntry) {
	why := fmt.Sprintf("refused revision %d: %v", e.Revision, e.Err)
	r.log.Warn("refused a revision of the fleet's configuration; keeping the last good one", slog.Uint64("revision", e.Revision),
		slog.String("error", e.Err.Error()), slog.Uint64("running", r.conf.get().Revision))
	r.conf.mu.Lock()
	r.conf.state.Refused = why
	r.conf.mu.Unlock()
	if r.broker != nil {
		r.broker.Stir() // the others and broker status hear of it at once
	}
}

// apply takes a new revision heard from the watcher.
func (r *Replica) apply(e kv.ConfigEntry) {
	if e.Deleted {
		// Deleted or purged by hand: keep the last good one, and say so
		// until a revision is written again.
		note := fmt.Sprintf("the fleet's configuration was deleted from the bucket (revision %d): keeping revision %d; broker config rollback writes it again", e.Revision, r.conf.get().Revision)
		r.log.Warn(note)
		r.conf.mu.Lock()
		r.conf.state.Note = note
		r.conf.mu.Unlock()
		return
	}
	if e.Err != nil {
		r.refuse(e)
		return
	}
	pools, pol, bound, err := e.Config.Settings()
	if err == nil {
		err = r.broker.Reconfigure(pools, pol, bound)
	}
	if err != nil {
		e.Err = err
		r.refuse(e)
		return
	}
	r.conf.mu.Lock()
	same := r.conf.hash == e.Config.Hash()
	r.conf.mu.Unlock()
	r.setConfig(e.Revision, e.Config.Hash())
	r.broker.Stir() // the others and broker status hear the revision at once
	if !same {
		r.log.Info("applied a new revision of the fleet's configuration", slog.Uint64("revision", e.Revision),
			slog.String("by", e.Config.By), slog.Int("pools", len(pools)))
	}
}

// configOpenTimeout bounds opening the configuration bucket at start.
const configOpenTimeout = 5 * time.Second

// startConfig opens the configuration bucket and resolves what the
// replica starts with. A server without JetStream leaves the replica's
// own settings in force.
func (r *Replica) startConfig(ctx context.Context) (*kv.ConfigStore, error) {
	js, err := jetstream.New(r.nc)
	if err != nil {
		return nil, err
	}
	// Short: a server that refuses the bucket's subjects never answers,
	// and the replica then serves by its own settings.
	actx, cancel := context.WithTimeout(ctx, configOpenTimeout)
	defer cancel()
	cs, err := kv.OpenConfig(actx, js, kv.ConfigBucket(r.cfg.Bucket), true, kv.ConfigReplicas(r.cfg.KVReplicas))
	if err != nil {
		return nil, fmt.Errorf("open the fleet's configuration bucket %q: %w", kv.ConfigBucket(r.cfg.Bucket), err)
	}
	if err := r.resolveConfig(actx, cs); err != nil {
		return nil, fmt.Errorf("the fleet's configuration in bucket %q: %w", kv.ConfigBucket(r.cfg.Bucket), err)
	}
	return cs, nil
}

// watchConfig follows the configuration bucket until the replica stops.
func (r *Replica) watchConfig(cs *kv.ConfigStore) {
	stop, err := cs.WatchConfig(r.ctx, r.conf.get().Revision, r.apply, func() {
		note := fmt.Sprintf("the fleet's configuration bucket was deleted: keeping revision %d and following a new bucket", r.conf.get().Revision)
		r.log.Warn(note)
		r.conf.mu.Lock()
		r.conf.state.Note = note
		r.conf.mu.Unlock()
	})
	if err != nil {
		r.log.Warn("cannot watch the fleet's configuration; keeping the revision in force", slog.Any("error", err))
		return
	}
	if !r.spawn(func(ctx context.Context) { <-ctx.Done(); stop() }) {
		stop() // the replica is stopping already
	}
}

// fleetConfig opens the fleet's configuration when there is JetStream;
// without it, or when the bucket cannot be opened, the replica runs by
// its own settings, and says so once.
func (r *Replica) fleetConfig(ctx context.Context) *kv.ConfigStore {
	if !r.cfg.FleetConfig {
		return nil
	}
	cs, err := r.startConfig(ctx)
	if err != nil {
		note := "running by this replica's own pools and settings: " + err.Error()
		if errors.Is(err, kv.ErrNoJetStream) {
			note = "no JetStream: this replica runs by its own pools and settings"
		}
		if perr := r.nc.LastError(); errors.Is(perr, nats.ErrPermissionViolation) {
			// The server refuses JetStream API requests without an
			// answer; the request only times out.
			note += "; the server refused a request (" + perr.Error() + "): grant the permissions in docs/security.md (Least privilege), or set BROKER_CONFIG_SOURCE=local"
		}
		r.log.Warn(note)
		r.conf.mu.Lock()
		r.conf.state.Note = note
		r.conf.mu.Unlock()
	}
	return cs
}

// The configuration's metrics.
var (
	configRevisionDesc = prometheus.NewDesc("broker_config_revision",
		"The revision of the fleet's configuration this replica runs by; 0: its own settings (no JetStream).", nil, nil)
	configRefusedDesc = prometheus.NewDesc("broker_config_refused",
		"1 while the newest revision of the fleet's configuration is one this replica refused (the status page says why), else 0.", nil, nil)
	configReplicasDesc = prometheus.NewDesc("broker_config_replicas",
		"Replicas heard on the stats subject within a second, this one among them, by the revision of the fleet's configuration each runs: at most 8 revisions, the most populous; the rest under revision=\"other\", those that tell none under \"unknown\".",
		[]string{"revision"}, nil)
	configDriftDesc = prometheus.NewDesc("broker_config_drift_replicas",
		"Replicas heard, this one among them, out of step with the highest revision any runs: on another revision, or refusing a newer one (the status page says which and why).", nil, nil)
)

// maxRevisionSeries bounds broker_config_replicas' series: anyone who may
// publish on the stats subject can tell any revision.
const maxRevisionSeries = 8

// configured makes the monitor report what the replica runs by, and what
// the others told of theirs.
func (m *monitor) configured(conf func() ConfigState, revs func() Revisions) {
	if m != nil {
		m.conf.Store(&conf)
		m.revs.Store(&revs)
	}
}
