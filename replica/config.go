package replica

import (
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"time"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/gecholog"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/safetext"
)

// A replica's configuration: what each field means, its default, and the
// checks Run makes before it starts.

// Config is one replica's settings. Zero fields take the defaults named.
type Config struct {
	NATS natsconn.Settings
	// Subject is the service_bus_topic of the broker's processor entries
	// in gl_config.json (DefaultSubject).
	Subject string
	// Queue is the queue group the replicas share calls in (DefaultQueue).
	Queue string
	// Bucket is the KV bucket of router health (DefaultBucket).
	Bucket string
	// LoggerSubject is where gecholog publishes its transaction log, the
	// service_bus.topic_exact_logger of its gl_config.json
	// (DefaultLoggerSubject).
	LoggerSubject string
	// LoggerSilence is how long the transaction log may be silent while a
	// pool that needs it has calls chosen before the replica says so
	// (DefaultLoggerSilence).
	LoggerSilence time.Duration
	// KVReplicas is the bucket's replicas when the replica creates it
	// (DefaultKVReplicas), within KVReplicasRange.
	KVReplicas int
	// Pools are the pools served (broker.DefaultPools).
	Pools []broker.Pool
	// SessionHeader is gecholog's session header, the session_id_header
	// of its gl_config.json, which pools with "affinity": "session" key
	// their calls by (gecholog.DefaultSessionHeader). It must pass
	// gecholog.CheckSessionHeader.
	SessionHeader string
	// Policy is the failure policy; its DisabledTime defaults to
	// broker.DefaultDisabledTime.
	Policy broker.Policy
	// ID names this replica in the records it writes (DefaultID).
	ID string
	// MetricsAddr is the HTTP listener for the status page at /, /metrics,
	// /healthz, /readyz and /explain; none when empty.
	MetricsAddr string
	// HTTPIdleTimeout is how long the listener keeps a keep-alive
	// connection idle between requests (DefaultHTTPIdleTimeout).
	HTTPIdleTimeout time.Duration
	// HTTPMaxConns bounds the listener's open connections
	// (DefaultHTTPMaxConns): past it, the longest idle one is closed, or
	// the new one waits until one closes.
	HTTPMaxConns int
	// RequireKV refuses to start when the server has no JetStream.
	RequireKV bool
	// Embedded, when set, starts an in-process nats-server with JetStream
	// and serves on it instead of NATS.Servers.
	Embedded *Embedded
	// Logger receives the replica's log; nil discards it.
	Logger *slog.Logger
	// Reattach is how often local mode looks for JetStream (DefaultReattach).
	Reattach time.Duration
	// DrainTimeout bounds how long a stopping replica waits for the calls
	// it already holds (DefaultDrainTimeout).
	DrainTimeout time.Duration
	// WriteDrainTimeout bounds how long it then waits for the bucket
	// writes those calls started, retrying while JetStream is away
	// (DefaultWriteDrainTimeout).
	WriteDrainTimeout time.Duration
	// InFlightBound is how long a chosen call counts as in flight when its
	// report never comes (broker.DefaultInFlightBound).
	InFlightBound time.Duration
	// MaxCallTokens is the most tokens one call of the transaction log
	// counts with (broker.DefaultMaxCallTokens): a call above it is
	// refused as capped, so that a forged transaction cannot count 10^15.
	MaxCallTokens int64
	// PoolsFile names the file Pools came from; "" when none was given.
	PoolsFile string
	// Given names the settings of the fleet's configuration (the pools
	// file, the failure policy, the in-flight bound) given to this replica
	// rather than left at their defaults, such as "BROKER_POOLS" or
	// "DISABLED_TIME". A replica given settings that were never written
	// writes them as a new revision: an edit takes effect on restart (see
	// docs/operating.md, "The fleet's configuration").
	Given []string
	// FleetConfig makes the replica follow the fleet's configuration in
	// the <Bucket>_config bucket (docs/operating.md). Off, it runs by its
	// own pools and policy.
	FleetConfig bool
	// Ready, when set, is called once the replica answers calls.
	Ready func(*Replica)
}

// DefaultID names a replica by host and process: container hosts are
// unique, and the pid tells processes on one host apart.
func DefaultID() string {
	h, err := os.Hostname()
	if err != nil {
		h = "broker"
	}
	return h + ":" + strconv.Itoa(os.Getpid())
}

func (c Config) withDefaults() (Config, error) {
	if c.Subject == "" {
		c.Subject = DefaultSubject
	}
	if c.Queue == "" {
		c.Queue = DefaultQueue
	}
	if c.Bucket == "" {
		c.Bucket = DefaultBucket
	}
	if c.LoggerSubject == "" {
		c.LoggerSubject = DefaultLoggerSubject
	}
	if c.LoggerSilence <= 0 {
		c.LoggerSilence = DefaultLoggerSilence
	}
	if c.KVReplicas == 0 {
		c.KVReplicas = DefaultKVReplicas
	}
	if !KVReplicasRange.Contains(c.KVReplicas) {
		return c, fmt.Errorf("kv-replicas %d: must be %v", c.KVReplicas, KVReplicasRange)
	}
	if c.Pools == nil {
		c.Pools = broker.DefaultPools()
	}
	if c.SessionHeader == "" {
		c.SessionHeader = gecholog.DefaultSessionHeader
	}
	if err := gecholog.CheckSessionHeader(c.SessionHeader); err != nil {
		return c, fmt.Errorf("session-header %q: %w", safetext.Clip(c.SessionHeader, safetext.MaxShown), err)
	}
	if c.Policy.DisabledTime == 0 {
		c.Policy.DisabledTime = broker.DefaultDisabledTime
	}
	if c.MaxCallTokens == 0 {
		c.MaxCallTokens = broker.DefaultMaxCallTokens
	}
	if !broker.MaxCallTokensRange.Contains(c.MaxCallTokens) {
		return c, fmt.Errorf("max-call-tokens %d: must be %v", c.MaxCallTokens, broker.MaxCallTokensRange)
	}
	if c.ID == "" {
		c.ID = DefaultID()
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Reattach <= 0 {
		c.Reattach = DefaultReattach
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.WriteDrainTimeout <= 0 {
		c.WriteDrainTimeout = DefaultWriteDrainTimeout
	}
	if c.HTTPIdleTimeout <= 0 {
		c.HTTPIdleTimeout = DefaultHTTPIdleTimeout
	}
	if c.HTTPMaxConns <= 0 {
		c.HTTPMaxConns = DefaultHTTPMaxConns
	}
	for _, s := range []struct{ name, subject string }{
		{"subject", c.Subject}, {"logger-subject", c.LoggerSubject},
		{"bucket", NewsSubject(c.Bucket)}, {"bucket", StatsSubject(c.Bucket)},
	} {
		if err := CheckSubject(s.subject); err != nil {
			return c, fmt.Errorf("%s %q: not a subject a replica may use: %w", s.name, s.subject, err)
		}
	}
	policy, err := c.Policy.Resolve()
	if err != nil {
		return c, err
	}
	c.Policy = policy
	return c, nil
}
