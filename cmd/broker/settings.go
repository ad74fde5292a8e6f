package main

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/gecholog"
	"github.com/gecholog/broker/internal/flagenv"
	"github.com/gecholog/broker/internal/safetext"
	"github.com/gecholog/broker/ops"
	"github.com/gecholog/broker/replica"
)

// settings are the settings of every command. Each is registered in one
// of the methods below: its flag, its variable and its help. Its default
// and range are read from the package that owns it (replica for the
// replica's, broker for the failure policy's), where validation reads
// them too. A command registers the ones it takes, and resolve checks and
// derives them once for every command.
type settings struct {
	set    *flagenv.Set
	getenv func(string) string

	// The flags write the replica's settings into its Config, which serve
	// runs; the other commands read the parts they take (NATS, Bucket,
	// Pools, Policy, Subject, LoggerSubject, MetricsAddr).
	replica.Config

	gechologHost  string
	poolsFile     string // Pools are resolved from it
	logLevel      string
	logFormat     string
	glConfig      string
	configSource  string
	embedded      bool             // serve on an in-process nats-server,
	embeddedAt    replica.Embedded // this one
	maxCallTokens int              // replica.Config.MaxCallTokens
}

// defaultGechologHost is where gecholog's NATS is without GECHOLOG_HOST.
const defaultGechologHost = "localhost"

func newSettings(name string, getenv func(string) string) *settings {
	return &settings{set: flagenv.New(name, getenv), getenv: getenv}
}

// connection registers what every command that talks to NATS takes: where
// the server is, how to authenticate, the bucket, the pools and the log.
func (s *settings) connection() {
	s.natsSettings()
	s.poolsSetting()
}

// natsSettings registers what connection does but the pools: the config
// commands read the pools from the bucket, never from BROKER_POOLS.
func (s *settings) natsSettings() {
	f := s.set
	f.String(&s.NATS.Servers, "server", "NATS_URL", "", "NATS server `URLs`, comma separated; wins over GECHOLOG_HOST")
	f.String(&s.gechologHost, "gecholog-host", "GECHOLOG_HOST", defaultGechologHost, "gecholog `host`; the broker connects to nats://HOST:4222")
	f.String(&s.NATS.Token, "token", "NATS_TOKEN", "", "NATS `token`, as gecholog's service bus uses")
	f.String(&s.NATS.User, "user", "NATS_USER", "", "NATS `user` name")
	f.String(&s.NATS.Password, "password", "NATS_PASSWORD", "", "NATS `password`")
	f.String(&s.NATS.Creds, "creds", "NATS_CREDS", "", "NATS credentials `file` (JWT and seed)")
	f.String(&s.NATS.NKey, "nkey", "NATS_NKEY", "", "NATS nkey seed `file`")
	f.String(&s.NATS.TLSCert, "tlscert", "NATS_CERT", "", "TLS client certificate `file`")
	f.String(&s.NATS.TLSKey, "tlskey", "NATS_KEY", "", "TLS client key `file`")
	f.String(&s.NATS.TLSCA, "tlsca", "NATS_CA", "", "TLS certificate authority `file` for verifying the server")
	f.String(&s.Bucket, "bucket", "BROKER_BUCKET", replica.DefaultBucket, "JetStream KV `bucket` holding disabled routers")
	f.String(&s.logLevel, "log-level", "BROKER_LOG_LEVEL", "info", "`level`: debug, info, warn or error")
	f.String(&s.logFormat, "log-format", "BROKER_LOG_FORMAT", "text", "`format`: text or json")
}

func (s *settings) poolsSetting() {
	s.set.String(&s.poolsFile, "pools", "BROKER_POOLS", "", "pools `file` (JSON); default: "+describePools(broker.DefaultPools()))
}

func (s *settings) subjectSetting() {
	s.set.String(&s.Subject, "subject", "BROKER_SUBJECT", replica.DefaultSubject, "`subject` gecholog sends the broker's processor calls to")
}

func (s *settings) loggerSubjectSetting() {
	s.set.String(&s.LoggerSubject, "logger-subject", "BROKER_LOGGER_SUBJECT", replica.DefaultLoggerSubject, "`subject` of gecholog's transaction log (service_bus.topic_exact_logger), which the latency and headroom strategies read")
}

func (s *settings) sessionHeaderSetting() {
	s.set.String(&s.SessionHeader, "session-header", "BROKER_SESSION_HEADER", gecholog.DefaultSessionHeader, "`header` gecholog carries its session id in (gl_config.json's session_id_header), which pools with \"affinity\": \"session\" keep a conversation on one router by")
}

func (s *settings) glConfigSetting() {
	s.set.String(&s.glConfig, "gl-config", "BROKER_GL_CONFIG", "", "gecholog's gl_config.json `file`: serve refuses to start when it does not route the pools through this broker; check reads it (default "+ops.DefaultGLConfig+")")
}

func (s *settings) disabledTimeSetting() {
	s.Policy.DisabledTime = broker.DefaultDisabledTime
	s.set.Var((*disabledTime)(&s.Policy), "disabled-time", "DISABLED_TIME", "`minutes` a failed router stays out of its pool, fractions allowed; 0: failures never take a router out")
}

func (s *settings) backoffCapSetting() {
	s.set.Float(&s.Policy.MaxMultiplier, "backoff-cap", "BROKER_BACKOFF_CAP", broker.DefaultMaxMultiplier, broker.MaxMultiplierRange.Min, broker.MaxMultiplierRange.Max, "largest `multiple` of the disabled time a disable (or a Retry-After) lasts")
}

func (s *settings) probeTimeoutSetting() {
	s.set.Duration(&s.Policy.ProbeTimeout, "probe-timeout", "BROKER_PROBE_TIMEOUT", broker.DefaultProbeTimeout, broker.ProbeTimeoutRange.Min, broker.ProbeTimeoutRange.Max, "`time` a probe call may go unreported before another probe may be sent")
}

// policyLimits registers the settings that bound how long a record holds
// a router out, for a tool that shows what the replicas act on.
func (s *settings) policyLimits() {
	s.disabledTimeSetting()
	s.backoffCapSetting()
	s.probeTimeoutSetting()
}

func (s *settings) metricsAddrSetting() {
	s.set.String(&s.MetricsAddr, "metrics-addr", "BROKER_METRICS_ADDR", "", "`address` of the HTTP listener for the status page (/), /metrics, /healthz, /readyz and /explain (off when empty)")
}

// wiring is how the settings wire the broker to gecholog, for checking a
// gl_config.json.
func (s *settings) wiring() gecholog.Wiring {
	return gecholog.Wiring{Subject: s.Subject, LoggerSubject: s.LoggerSubject, SessionHeader: s.SessionHeader}
}

// serving registers the processor's own settings.
func (s *settings) serving() {
	f := s.set
	s.connection()
	s.subjectSetting()
	s.loggerSubjectSetting()
	s.sessionHeaderSetting()
	s.glConfigSetting()
	s.metricsAddrSetting()
	p := &s.Policy
	f.String(&s.Queue, "queue", "BROKER_QUEUE", replica.DefaultQueue, "`queue` group the replicas share calls in")
	f.Int(&s.KVReplicas, "kv-replicas", "BROKER_KV_REPLICAS", replica.DefaultKVReplicas, replica.KVReplicasRange.Min, replica.KVReplicasRange.Max, "`replicas` of the bucket when the broker creates it (3 on a NATS cluster)")
	f.String(&s.ID, "id", "BROKER_ID", replica.DefaultID(), "`name` of this replica in the records it writes")
	f.Int(&p.Threshold, "failure-threshold", "BROKER_FAILURE_THRESHOLD", broker.DefaultThreshold, broker.ThresholdRange.Min, broker.ThresholdRange.Max, "consecutive `failures`, counted over every replica, that disable a router")
	f.Float(&p.Rate, "failure-rate", "BROKER_FAILURE_RATE", broker.DefaultRate, broker.RateRange.Min, broker.RateRange.Max, "`percent` of a router's calls, over every replica, that disables it when they failed within the failure-rate window (0: off)")
	f.Duration(&p.RateWindow, "failure-rate-window", "BROKER_FAILURE_RATE_WINDOW", broker.DefaultRateWindow, broker.RateWindowRange.Min, broker.RateWindowRange.Max, "the failure-rate rule's window of recent calls, a `duration`")
	f.Int(&p.RateMinCalls, "failure-rate-min-calls", "BROKER_FAILURE_RATE_MIN_CALLS", broker.DefaultRateMinCalls, broker.RateMinCallsRange.Min, broker.RateMinCallsRange.Max, "`calls` within the window before the failure-rate rule judges a router")
	p.FailureCodes = broker.DefaultFailureCodes
	f.Var((*failureCodes)(&p.FailureCodes), "failure-codes", "BROKER_FAILURE_CODES", "`statuses` that count against a router: codes and classes such as 5xx, comma separated")
	f.Float(&p.Multiplier, "backoff-multiplier", "BROKER_BACKOFF_MULTIPLIER", broker.DefaultMultiplier, broker.MultiplierRange.Min, broker.MultiplierRange.Max, "`factor` the disabled time grows by each time a router is disabled again before it recovered (1: no backoff)")
	s.policyLimits() // DISABLED_TIME, BROKER_BACKOFF_CAP, BROKER_PROBE_TIMEOUT
	p.AllDisabled = broker.DefaultAllDisabled
	f.Var((*allDisabled)(&p.AllDisabled), "all-disabled", "BROKER_ALL_DISABLED", "what a pool with no enabled router does: `mode` panic (the router back soonest), ingress (the ingress's own outbound) or any")
	f.Int(&s.maxCallTokens, "max-call-tokens", "BROKER_MAX_CALL_TOKENS", broker.DefaultMaxCallTokens, int(broker.MaxCallTokensRange.Min), int(broker.MaxCallTokensRange.Max), "most `tokens` one call of gecholog's transaction log counts with: a call above it (a forged or broken transaction) is refused as capped and not counted")
	f.Duration(&s.DrainTimeout, "drain-timeout", "BROKER_DRAIN_TIMEOUT", replica.DefaultDrainTimeout, replica.DrainTimeoutRange.Min, replica.DrainTimeoutRange.Max, "`time` a stopping replica (SIGTERM, SIGINT) keeps answering the calls it holds before it stops anyway; then it waits up to "+replica.DefaultWriteDrainTimeout.String()+" for its bucket writes, so give the orchestrator's grace period (Kubernetes' terminationGracePeriodSeconds) both")
	f.Duration(&s.InFlightBound, "inflight-bound", "BROKER_INFLIGHT_BOUND", broker.DefaultInFlightBound, broker.InFlightBoundRange.Min, broker.InFlightBoundRange.Max, "`time` a chosen call counts as in flight, over every replica, when its report never comes (least-busy)")
	f.String(&s.configSource, "config-source", "BROKER_CONFIG_SOURCE", "fleet", "`source` of the pools and failure policy: fleet (the fleet's configuration in the <bucket>_config bucket, which these settings seed and an edit to them updates; see broker config) or local (these settings only)")
	f.Bool(&s.RequireKV, "require-kv", "BROKER_REQUIRE_KV", "refuse to start when the server has no JetStream, instead of serving in local mode")
	f.Bool(&s.embedded, "embedded-nats", "BROKER_EMBEDDED_NATS", "start an in-process nats-server with JetStream and serve on it")
	f.String(&s.embeddedAt.Listen, "embedded-listen", "BROKER_EMBEDDED_LISTEN", "127.0.0.1:4222", "listen `address` of the embedded nats-server")
	f.String(&s.embeddedAt.StoreDir, "embedded-store", "BROKER_EMBEDDED_STORE", filepath.Join(cmp.Or(s.getenv("TMPDIR"), "/tmp"), "broker-jetstream"), "JetStream store `directory` of the embedded nats-server")
}

// bucketRE is a JetStream bucket name.
var bucketRE = regexp.MustCompile(`^[a-zA-Z0-9_-]+$`)

// resolve checks the settings the command registered and derives the rest:
// the server from GECHOLOG_HOST, the pools from their file.
func (s *settings) resolve() error {
	has := s.set.Has
	if has("server") && s.NATS.Servers == "" {
		s.NATS.Servers = "nats://" + cmp.Or(s.gechologHost, defaultGechologHost) + ":4222"
	}
	for _, subject := range []struct{ name, env, value string }{
		{"subject", "BROKER_SUBJECT", s.Subject},
		{"logger-subject", "BROKER_LOGGER_SUBJECT", s.LoggerSubject},
	} {
		if err := replica.CheckSubject(subject.value); has(subject.name) && err != nil {
			return fmt.Errorf("%s (%s) %q: not a subject the broker may use: %w", subject.name, subject.env, subject.value, err)
		}
	}
	if err := gecholog.CheckSessionHeader(s.SessionHeader); has("session-header") && err != nil {
		return fmt.Errorf("session-header (BROKER_SESSION_HEADER) %q: %w", safetext.Clip(s.SessionHeader, safetext.MaxShown), err)
	}
	switch {
	case has("queue") && (replica.CheckSubject(s.Queue) != nil || strings.Contains(s.Queue, ".")):
		return fmt.Errorf("queue (BROKER_QUEUE) %q: a queue group is one token without spaces, control characters, dots or wildcards", s.Queue)
	case has("id") && s.ID == "":
		return errors.New("id: give this replica a name")
	case has("id") && len(s.ID) > replica.MaxID:
		return fmt.Errorf("id (BROKER_ID): %d bytes; a replica's name is at most %d", len(s.ID), replica.MaxID)
	case has("bucket") && !bucketRE.MatchString(s.Bucket):
		return fmt.Errorf("bucket %q: a bucket name holds only letters, digits, - and _", s.Bucket)
	}
	if has("config-source") && s.configSource != "fleet" && s.configSource != "local" {
		return fmt.Errorf("config-source (BROKER_CONFIG_SOURCE) %q: fleet or local", s.configSource)
	}
	if err := s.NATS.Check(); err != nil {
		return err
	}
	if has("log-level") {
		if _, err := logLevel(s.logLevel); err != nil {
			return err
		}
	}
	if has("log-format") && s.logFormat != "text" && s.logFormat != "json" {
		return fmt.Errorf("log-format %q: text or json", s.logFormat)
	}
	if has("pools") {
		s.Pools = broker.DefaultPools()
		if s.poolsFile != "" {
			p, err := readPools(s.poolsFile)
			if err != nil {
				return fmt.Errorf("pools %s: %w", s.poolsFile, err)
			}
			s.Pools = p
			s.PoolsFile = s.poolsFile
		}
	}
	return nil
}

// parse reads args (flags only) and resolves them.
func (s *settings) parse(args []string, usage string, stdout io.Writer) error {
	if err := s.set.Parse(args, usage, stdout); err != nil {
		return err
	}
	return s.resolve()
}

// parseOperands reads args, flags and operands mixed, and resolves them.
func (s *settings) parseOperands(args []string, usage string, stdout io.Writer) ([]string, error) {
	operands, err := s.set.ParseOperands(args, usage, stdout)
	if err != nil {
		return nil, err
	}
	return operands, s.resolve()
}

func logLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return l, fmt.Errorf("log-level %q: debug, info, warn or error", s)
	}
	return l, nil
}

func (s *settings) logger(w io.Writer) *slog.Logger {
	level, _ := logLevel(s.logLevel) // checked in resolve
	opts := &slog.HandlerOptions{Level: level}
	if s.logFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// fleetSettings are the settings of the fleet's configuration: the
// replicas must agree on them, and a replica given one writes it.
var fleetSettings = []string{"pools", "disabled-time", "failure-threshold", "failure-rate", "failure-rate-window",
	"failure-rate-min-calls", "failure-codes", "backoff-multiplier", "backoff-cap", "probe-timeout", "all-disabled", "inflight-bound"}

// replicaConfig is the replica the serve settings describe.
func (s *settings) replicaConfig(log *slog.Logger) replica.Config {
	c := s.Config
	c.Logger = log
	c.MaxCallTokens = int64(s.maxCallTokens)
	c.FleetConfig = s.configSource == "fleet"
	for _, name := range fleetSettings {
		if s.set.Given(name) && (name != "pools" || s.poolsFile != "") {
			c.Given = append(c.Given, cmp.Or(s.set.Env(name), "-"+name))
		}
	}
	if s.embedded {
		e := s.embeddedAt
		c.Embedded = &e
	}
	return c
}

// target is what the operator's bucket commands act on; they say on
// stderr what they wait for.
func (s *settings) target(stderr io.Writer) ops.Target {
	return ops.Target{NATS: s.NATS, Bucket: s.Bucket, Pools: s.Pools, PoolsFile: s.poolsFile, Progress: stderr}
}

// describePools says pools as -h does: "/azure/ over /azure/gpt35turbo/,
// /azure/gpt4/ and /azure/dud/".
func describePools(pools []broker.Pool) string {
	var each []string
	for _, p := range pools {
		paths := make([]string, len(p.Routers))
		for i, r := range p.Routers {
			paths[i] = r.Path
		}
		if n := len(paths); n > 1 {
			paths = append(paths[:n-2], paths[n-2]+" and "+paths[n-1])
		}
		each = append(each, p.Ingress+" over "+strings.Join(paths, ", "))
	}
	return strings.Join(each, "; ")
}
