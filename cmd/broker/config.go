package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/gecholog/broker/broker"
)

// config holds every setting of the serve command.
type config struct {
	server       string // NATS URL(s), resolved from NATS_URL or GECHOLOG_HOST
	gechologHost string
	token        string
	user         string
	password     string
	creds        string
	nkey         string
	tlsCert      string
	tlsKey       string
	tlsCA        string

	subject      string
	queue        string
	bucket       string
	kvReplicas   int
	disabledTime time.Duration
	poolsFile    string
	pools        []broker.Pool
	id           string
	glConfig     string // gl_config.json to check at startup
	metricsAddr  string
	policy       broker.Policy
	requireKV    bool
	// reattachEvery is how often a replica in local mode looks for
	// JetStream again; not a setting, tests shorten it.
	reattachEvery time.Duration

	logLevel  string
	logFormat string

	embedded       bool
	embeddedListen string
	embeddedStore  string
}

// settings registers flags whose defaults come from the environment, so a
// flag wins over its variable and the variable over the built-in default.
type settings struct {
	fs     *flag.FlagSet
	getenv func(string) string
	err    error // the first bad environment value
}

func newSettings(name string, getenv func(string) string) *settings {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned as one line; -h prints usage itself
	return &settings{fs: fs, getenv: getenv}
}

// value registers v under flag name and environment variable env. The flag
// is registered before the variable is applied, so -h shows the built-in
// default and never a secret from the environment.
func (s *settings) value(v flag.Value, name, env, usage string) {
	if env != "" {
		usage += " (env " + env + ")"
	}
	s.fs.Var(v, name, usage)
	if e := s.getenv(env); env != "" && e != "" {
		if err := v.Set(e); err != nil && s.err == nil {
			s.err = fmt.Errorf("environment variable %s=%q: %w", env, e, err)
		}
	}
}

func (s *settings) string(p *string, name, env, def, usage string) {
	*p = def
	s.value((*stringValue)(p), name, env, usage)
}

func (s *settings) int(p *int, name, env string, def, lo, hi int, usage string) {
	*p = def
	s.value(&intValue{p: p, lo: lo, hi: hi}, name, env, usage)
}

func (s *settings) bool(p *bool, name, env string, usage string) {
	s.value((*boolValue)(p), name, env, usage)
}

func (s *settings) float(p *float64, name, env string, def, lo, hi float64, usage string) {
	*p = def
	s.value(&floatValue{p: p, lo: lo, hi: hi}, name, env, usage)
}

func (s *settings) duration(p *time.Duration, name, env string, def, lo, hi time.Duration, usage string) {
	*p = def
	s.value(&spanValue{p: p, lo: lo, hi: hi}, name, env, usage)
}

func (s *settings) minutes(p *time.Duration, name, env string, def float64, usage string) {
	*p = time.Duration(def * float64(time.Minute))
	s.value((*minutesValue)(p), name, env, usage)
}

// parse reads args; -h prints the usage to stdout and gives flag.ErrHelp.
func (s *settings) parse(args []string, stdout io.Writer) error {
	if s.err != nil {
		return s.err
	}
	err := s.fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(stdout, "Usage of broker %s:\n", s.fs.Name())
		s.fs.SetOutput(stdout)
		s.fs.PrintDefaults()
	}
	if err != nil {
		return err
	}
	if s.fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", s.fs.Arg(0))
	}
	return nil
}

type stringValue string

func (v *stringValue) Set(s string) error { *v = stringValue(s); return nil }
func (v *stringValue) String() string     { return string(*v) }

type boolValue bool

func (v *boolValue) Set(s string) error {
	b, err := strconv.ParseBool(s)
	if err != nil {
		return errors.New("not true or false")
	}
	*v = boolValue(b)
	return nil
}
func (v *boolValue) String() string   { return strconv.FormatBool(bool(*v)) }
func (v *boolValue) IsBoolFlag() bool { return true }

type intValue struct {
	p      *int
	lo, hi int
}

func (v *intValue) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil || n < v.lo || n > v.hi {
		return fmt.Errorf("not a whole number from %d to %d", v.lo, v.hi)
	}
	*v.p = n
	return nil
}

func (v *intValue) String() string {
	if v == nil || v.p == nil {
		return "0"
	}
	return strconv.Itoa(*v.p)
}

type floatValue struct {
	p      *float64
	lo, hi float64
}

func (v *floatValue) Set(s string) error {
	f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || math.IsNaN(f) || f < v.lo || f > v.hi {
		return fmt.Errorf("not a number from %v to %v", v.lo, v.hi)
	}
	*v.p = f
	return nil
}

func (v *floatValue) String() string {
	if v == nil || v.p == nil {
		return "0"
	}
	return strconv.FormatFloat(*v.p, 'f', -1, 64)
}

type spanValue struct {
	p      *time.Duration
	lo, hi time.Duration
}

func (v *spanValue) Set(s string) error {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil || d < v.lo || d > v.hi {
		return fmt.Errorf("not a duration from %v to %v, such as 2m or 90s", v.lo, v.hi)
	}
	*v.p = d
	return nil
}

func (v *spanValue) String() string {
	if v == nil || v.p == nil {
		return "0s"
	}
	return v.p.String()
}

// maxMinutes is a year: longer is surely a typo, and far longer would
// overflow time.Duration.
const maxMinutes = 365 * 24 * 60

// minutesValue is DISABLED_TIME: minutes, fractions allowed, as the
// original broker read it.
type minutesValue time.Duration

func (v *minutesValue) Set(s string) error {
	m, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || math.IsNaN(m) || m <= 0 || m > maxMinutes {
		return fmt.Errorf("not a number of minutes above 0 and at most %d (fractions allowed, e.g. 0.5)", maxMinutes)
	}
	d := time.Duration(m * float64(time.Minute))
	if d < time.Second {
		return errors.New("less than a second: JetStream keeps TTLs in whole seconds")
	}
	*v = minutesValue(d)
	return nil
}

func (v *minutesValue) String() string {
	if v == nil {
		return "0"
	}
	return strconv.FormatFloat(time.Duration(*v).Minutes(), 'f', -1, 64)
}

var (
	// A NATS subject: dot-separated tokens without white space; wildcards
	// are allowed for a subscription.
	subjectRE = regexp.MustCompile(`^[^.\s]+(\.[^.\s]+)*$`)
	// JetStream bucket names.
	bucketRE = regexp.MustCompile(`^[a-zA-Z0-9_-]+$`)
)

// connection registers the settings every command that talks to NATS
// shares: where the server is, how to authenticate, and the bucket.
func (s *settings) connection(c *config) {
	s.string(&c.server, "server", "NATS_URL", "", "NATS server `URLs`, comma separated; wins over GECHOLOG_HOST")
	s.string(&c.gechologHost, "gecholog-host", "GECHOLOG_HOST", "", "gecholog `host`; the broker connects to nats://HOST:4222 (default localhost)")
	s.string(&c.token, "token", "NATS_TOKEN", "", "NATS `token`, as gecholog's service bus uses")
	s.string(&c.user, "user", "NATS_USER", "", "NATS `user` name")
	s.string(&c.password, "password", "NATS_PASSWORD", "", "NATS `password`")
	s.string(&c.creds, "creds", "NATS_CREDS", "", "NATS credentials `file` (JWT and seed)")
	s.string(&c.nkey, "nkey", "NATS_NKEY", "", "NATS nkey seed `file`")
	s.string(&c.tlsCert, "tlscert", "NATS_CERT", "", "TLS client certificate `file`")
	s.string(&c.tlsKey, "tlskey", "NATS_KEY", "", "TLS client key `file`")
	s.string(&c.tlsCA, "tlsca", "NATS_CA", "", "TLS certificate authority `file` for verifying the server")
	s.string(&c.bucket, "bucket", "BROKER_BUCKET", "gl_broker", "JetStream KV `bucket` holding disabled routers")
	s.string(&c.poolsFile, "pools", "BROKER_POOLS", "", "pools `file` (JSON); default: /azure/ over /azure/gpt35turbo/, /azure/gpt4/ and /azure/dud/")
	s.string(&c.logLevel, "log-level", "BROKER_LOG_LEVEL", "info", "`level`: debug, info, warn or error")
	s.string(&c.logFormat, "log-format", "BROKER_LOG_FORMAT", "text", "`format`: text or json")
}

// parseServe reads the serve command's settings.
func parseServe(args []string, getenv func(string) string, stdout io.Writer) (config, error) {
	var c config
	s := newSettings("serve", getenv)
	s.connection(&c)
	s.string(&c.subject, "subject", "BROKER_SUBJECT", "coburn.gl.broker", "`subject` gecholog sends the broker's processor calls to")
	s.string(&c.queue, "queue", "BROKER_QUEUE", "broker", "`queue` group the replicas share calls in")
	s.int(&c.kvReplicas, "kv-replicas", "BROKER_KV_REPLICAS", 1, 1, 5, "`replicas` of the bucket when the broker creates it (3 on a NATS cluster)")
	s.minutes(&c.disabledTime, "disabled-time", "DISABLED_TIME", 10, "`minutes` a failed router stays out of its pool, fractions allowed")
	s.string(&c.id, "id", "BROKER_ID", defaultID(), "`name` of this replica in the records it writes")
	s.int(&c.policy.Threshold, "failure-threshold", "BROKER_FAILURE_THRESHOLD", 1, 1, 1000, "consecutive `failures`, counted over every replica, that disable a router")
	s.float(&c.policy.Multiplier, "backoff-multiplier", "BROKER_BACKOFF_MULTIPLIER", 2, 1, 100, "`factor` the disabled time grows by each time a router is disabled again before it recovered (1: no backoff)")
	s.float(&c.policy.MaxMultiplier, "backoff-cap", "BROKER_BACKOFF_CAP", 8, 1, 1000, "largest `multiple` of the disabled time a disable (or a Retry-After) lasts")
	s.duration(&c.policy.ProbeTimeout, "probe-timeout", "BROKER_PROBE_TIMEOUT", 2*time.Minute, time.Second, 24*time.Hour, "how long a probe call may go unreported before another `duration` may be tried")
	s.string((*string)(&c.policy.AllDisabled), "all-disabled", "BROKER_ALL_DISABLED", "panic", "what a pool with no enabled router does: `mode` panic (the router back soonest), ingress (the ingress's own outbound) or any")
	s.string(&c.glConfig, "gl-config", "BROKER_GL_CONFIG", "", "gecholog's gl_config.json `file`: refuse to start when it does not route the pools through this broker")
	s.string(&c.metricsAddr, "metrics-addr", "BROKER_METRICS_ADDR", "", "`address` of the HTTP listener for /metrics, /healthz and /readyz (off when empty)")
	s.bool(&c.requireKV, "require-kv", "BROKER_REQUIRE_KV", "refuse to start when the server has no JetStream, instead of serving in local mode")
	s.bool(&c.embedded, "embedded-nats", "BROKER_EMBEDDED_NATS", "start an in-process nats-server with JetStream and serve on it")
	s.string(&c.embeddedListen, "embedded-listen", "BROKER_EMBEDDED_LISTEN", "127.0.0.1:4222", "listen `address` of the embedded nats-server")
	s.string(&c.embeddedStore, "embedded-store", "BROKER_EMBEDDED_STORE", defaultStore(), "JetStream store `directory` of the embedded nats-server")
	if err := s.parse(args, stdout); err != nil {
		return c, err
	}
	c.reattachEvery = 5 * time.Second
	return c, c.resolve()
}

// resolveConnection checks the settings s.connection registers and derives
// the server and the pools: what every command that talks to NATS needs.
func (c *config) resolveConnection() error {
	if c.server == "" {
		host := c.gechologHost
		if host == "" {
			host = "localhost"
		}
		c.server = "nats://" + host + ":4222"
	}
	switch {
	case !bucketRE.MatchString(c.bucket):
		return fmt.Errorf("bucket %q: a bucket name holds only letters, digits, - and _", c.bucket)
	case (c.tlsCert == "") != (c.tlsKey == ""):
		return errors.New("tlscert and tlskey: give both or neither")
	case c.user != "" && c.token != "":
		return errors.New("user and token: NATS takes one of them; unset NATS_TOKEN or NATS_USER")
	}
	if _, err := logLevel(c.logLevel); err != nil {
		return err
	}
	if c.logFormat != "text" && c.logFormat != "json" {
		return fmt.Errorf("log-format %q: text or json", c.logFormat)
	}
	c.pools = broker.DefaultPools()
	if c.poolsFile != "" {
		p, err := readPools(c.poolsFile)
		if err != nil {
			return fmt.Errorf("pools %s: %w", c.poolsFile, err)
		}
		c.pools = p
	}
	return nil
}

// resolve checks the serve command's settings and derives the rest.
func (c *config) resolve() error {
	switch {
	case !subjectRE.MatchString(c.subject):
		return fmt.Errorf("subject %q: not a NATS subject (dot-separated tokens, no spaces)", c.subject)
	case strings.ContainsAny(c.queue, " \t\r\n.*>") || c.queue == "":
		return fmt.Errorf("queue %q: a queue group is one token without spaces, dots or wildcards", c.queue)
	case c.id == "":
		return errors.New("id: give this replica a name")
	}
	switch c.policy.AllDisabled {
	case broker.Panic, broker.Ingress, broker.Any:
	default:
		return fmt.Errorf("all-disabled %q: panic, ingress or any", c.policy.AllDisabled)
	}
	return c.resolveConnection()
}

// maxPoolsFile bounds what the broker reads: a pools file is a few
// kilobytes even with a thousand routers.
const maxPoolsFile = 1 << 20

func readPools(path string) ([]broker.Pool, error) {
	data, err := readFileAtMost(path, maxPoolsFile)
	if err != nil {
		return nil, err
	}
	if len(data) > maxPoolsFile {
		return nil, fmt.Errorf("larger than %d bytes; is it the right file?", maxPoolsFile)
	}
	return broker.ReadPools(bytes.NewReader(data))
}

func logLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return l, fmt.Errorf("log-level %q: debug, info, warn or error", s)
	}
	return l, nil
}

func newLogger(c config, w io.Writer) *slog.Logger {
	level, _ := logLevel(c.logLevel) // checked in resolve
	opts := &slog.HandlerOptions{Level: level}
	if c.logFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// defaultID names a replica by host and process: container hosts are
// unique, and the pid tells processes on one host apart.
func defaultID() string {
	h, err := os.Hostname()
	if err != nil {
		h = "broker"
	}
	return h + ":" + strconv.Itoa(os.Getpid())
}

func defaultStore() string {
	return os.TempDir() + string(os.PathSeparator) + "broker-jetstream"
}
