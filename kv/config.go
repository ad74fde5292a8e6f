package kv

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/safetext"
)

// The fleet's configuration: one key of a bucket of its own holds a
// versioned JSON document with the pools and every setting the replicas
// must agree on. Every write is a compare-and-set on the revision the
// writer read; the bucket keeps the last ConfigHistory revisions.

// ConfigKey is the key the document lives under.
const ConfigKey = "fleet"

// ConfigVersion is the document's schema this broker reads and writes. A
// document of another version is refused, never misread.
const ConfigVersion = 1

// ConfigHistory is how many revisions the bucket keeps (JetStream's most).
const ConfigHistory = 64

// MaxConfigSize bounds a document: a thousand routers take a few
// hundred kilobytes.
const MaxConfigSize = 1 << 20

// maxFiles bounds the file hashes a document remembers.
const maxFiles = 256

// ConfigBucket names the configuration bucket beside the health bucket.
func ConfigBucket(healthBucket string) string { return healthBucket + "_config" }

// ConfigPool is a pool as the pools file writes it.
type ConfigPool struct {
	Ingress  string          `json:"ingress"`
	Strategy string          `json:"strategy,omitempty"`
	Affinity *ConfigAffinity `json:"affinity,omitempty"`
	// BudgetSpent is broker.Pool.BudgetSpent; "" is "ingress".
	BudgetSpent string `json:"budget_spent,omitempty"`
	// Budget is broker.Pool.Budget: what the calls through the ingress
	// may use.
	Budget  *ConfigBudget  `json:"budget,omitempty"`
	Routers []ConfigRouter `json:"routers"`
}

// ConfigRouter is a pool member as the pools file writes it.
type ConfigRouter struct {
	Path     string        `json:"path"`
	Weight   int           `json:"weight"`
	Priority int           `json:"priority,omitempty"`
	Price    *ConfigPrice  `json:"price,omitempty"`
	Budget   *ConfigBudget `json:"budget,omitempty"`
}

// ConfigPrice is a router's price per million tokens, as the pools file
// writes it. The document always says cached_input; a pools file may
// leave it out, which means input.
type ConfigPrice struct {
	Input       float64  `json:"input"`
	Output      float64  `json:"output"`
	CachedInput *float64 `json:"cached_input,omitempty"`
}

// NewConfigPrice is p as the document writes it; nil for nil.
func NewConfigPrice(p *broker.Price) *ConfigPrice {
	if p == nil {
		return nil
	}
	cached := p.CachedInput
	return &ConfigPrice{Input: p.Input, Output: p.Output, CachedInput: &cached}
}

// BrokerPrice is the price c says, cached_input defaulting to input; nil
// for nil.
func (c *ConfigPrice) BrokerPrice() *broker.Price {
	if c == nil {
		return nil
	}
	p := broker.Price{Input: c.Input, Output: c.Output, CachedInput: c.Input}
	if c.CachedInput != nil {
		p.CachedInput = *c.CachedInput
	}
	return &p
}

// BrokerRouter is r as the broker takes it.
func (r ConfigRouter) BrokerRouter() broker.Router {
	return broker.Router{Path: r.Path, Weight: r.Weight, Priority: r.Priority, Price: r.Price.BrokerPrice(), Budget: r.Budget.BrokerBudget()}
}

// ConfigPolicy is the failure policy; durations are Go durations ("90s").
// Every field is written, so that a document says what it means.
type ConfigPolicy struct {
	DisabledTime  string  `json:"disabled_time"`
	NeverDisable  bool    `json:"never_disable,omitempty"`
	FailureCodes  string  `json:"failure_codes"`
	Threshold     int     `json:"threshold"`
	Rate          float64 `json:"rate"`
	RateWindow    string  `json:"rate_window"`
	RateMinCalls  int     `json:"rate_min_calls"`
	Multiplier    float64 `json:"multiplier"`
	MaxMultiplier float64 `json:"max_multiplier"`
	ProbeTimeout  string  `json:"probe_timeout"`
	AllDisabled   string  `json:"all_disabled"`
}

// FleetConfig is the document.
type FleetConfig struct {
	Version       int          `json:"version"`
	Pools         []ConfigPool `json:"pools"`
	Policy        ConfigPolicy `json:"policy"`
	InFlightBound string       `json:"inflight_bound"`
	// By, At and Source say who wrote the revision, when, and from what
	// (a replica's pools file, config set, a rollback).
	By     string    `json:"by,omitempty"`
	At     time.Time `json:"at,omitzero"`
	Source string    `json:"source,omitempty"`
	// Files are the content hashes of the replicas' own files that were
	// ever written as a revision, newest last, carried from revision to
	// revision: a replica whose file is among them holds an older
	// document, not an edit.
	Files []string `json:"files,omitempty"`
}

// NewFleetConfig makes the document for pools, policy and the in-flight
// bound (0: the default).
func NewFleetConfig(pools []broker.Pool, p broker.Policy, bound time.Duration) FleetConfig {
	c := FleetConfig{Version: ConfigVersion, InFlightBound: cmp.Or(bound, broker.DefaultInFlightBound).String()}
	for _, pl := range pools {
		cp := ConfigPool{Ingress: pl.Ingress, Strategy: pl.Strategy, Affinity: NewConfigAffinity(pl.Affinity), BudgetSpent: pl.BudgetSpent, Budget: NewConfigBudget(pl.Budget), Routers: []ConfigRouter{}}
		for _, r := range pl.Routers {
			cp.Routers = append(cp.Routers, ConfigRouter{Path: r.Path, Weight: r.Weight, Priority: r.Priority, Price: NewConfigPrice(r.Price), Budget: NewConfigBudget(r.Budget)})
		}
		c.Pools = append(c.Pools, cp)
	}
	if r, err := p.Resolve(); err == nil {
		p = r
	}
	c.Policy = ConfigPolicy{
		DisabledTime: p.DisabledTime.String(), NeverDisable: p.NeverDisable, FailureCodes: p.FailureCodes.String(),
		Threshold: p.Threshold, Rate: p.Rate, RateWindow: p.RateWindow.String(), RateMinCalls: p.RateMinCalls,
		Multiplier: p.Multiplier, MaxMultiplier: p.MaxMultiplier, ProbeTimeout: p.ProbeTimeout.String(),
		AllDisabled: string(p.AllDisabled),
	}
	return c
}

// Settings returns what the document says, validated exactly as a broker
// validates its configuration; an error names the field and why.
func (c FleetConfig) Settings() (pools []broker.Pool, p broker.Policy, bound time.Duration, err error) {
	if c.Version != ConfigVersion {
		return nil, p, 0, fmt.Errorf("version %d: this broker reads version %d; upgrade it to read this document", c.Version, ConfigVersion)
	}
	if len(c.Pools) == 0 {
		return nil, p, 0, errors.New("pools: empty; give at least one pool with an ingress and routers")
	}
	for i, cp := range c.Pools {
		if len(cp.Routers) == 0 {
			return nil, p, 0, fmt.Errorf("pools[%d] (%q).routers: empty; give at least one router", i, cp.Ingress)
		}
		pl := broker.Pool{Ingress: cp.Ingress, Strategy: cp.Strategy, Affinity: cp.Affinity.BrokerAffinity(), BudgetSpent: cp.BudgetSpent, Budget: cp.Budget.BrokerBudget()}
		for _, r := range cp.Routers {
			pl.Routers = append(pl.Routers, r.BrokerRouter())
		}
		pools = append(pools, pl)
	}
	dur := func(field, s string) (time.Duration, error) {
		if s == "" {
			return 0, nil
		}
		d, err := time.ParseDuration(s)
		if err != nil {
			return 0, fmt.Errorf("%s: %q is not a duration such as 90s or 5m", field, s)
		}
		return d, nil
	}
	cp := c.Policy
	p = broker.Policy{NeverDisable: cp.NeverDisable, Threshold: cp.Threshold, Rate: cp.Rate, RateMinCalls: cp.RateMinCalls,
		Multiplier: cp.Multiplier, MaxMultiplier: cp.MaxMultiplier, AllDisabled: broker.AllDisabled(cp.AllDisabled)}
	for _, f := range []float64{cp.Rate, cp.Multiplier, cp.MaxMultiplier} {
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return nil, p, 0, errors.New("policy: a number is not finite")
		}
	}
	if cp.DisabledTime == "" && !cp.NeverDisable {
		return nil, p, 0, errors.New("policy.disabled_time: missing; give a duration such as 10m, or \"never_disable\": true")
	}
	if p.DisabledTime, err = dur("policy.disabled_time", cp.DisabledTime); err != nil {
		return nil, p, 0, err
	}
	if p.RateWindow, err = dur("policy.rate_window", cp.RateWindow); err != nil {
		return nil, p, 0, err
	}
	if p.ProbeTimeout, err = dur("policy.probe_timeout", cp.ProbeTimeout); err != nil {
		return nil, p, 0, err
	}
	if bound, err = dur("inflight_bound", c.InFlightBound); err != nil {
		return nil, p, 0, err
	}
	if cp.FailureCodes != "" {
		if p.FailureCodes, err = broker.ParseFailureCodes(cp.FailureCodes); err != nil {
			return nil, p, 0, fmt.Errorf("policy.failure_codes: %w", err)
		}
	}
	if p.NeverDisable {
		p.DisabledTime = 0
	}
	if err := broker.Validate(pools, p, bound); err != nil {
		return nil, p, 0, err
	}
	return pools, p, bound, nil
}

// Hash is the hash of what the document configures (pools, policy,
// bound), not of who wrote it when.
func (c FleetConfig) Hash() string {
	content := FleetConfig{Version: c.Version, Pools: c.Pools, Policy: c.Policy, InFlightBound: c.InFlightBound}
	data, _ := json.Marshal(content)
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:8])
}

// Same reports whether c and o configure the same thing.
func (c FleetConfig) Same(o FleetConfig) bool { return c.Hash() == o.Hash() }

// DecodeFleetConfig reads a document and validates it: one error naming
// the field and why for anything a broker could misread.
func DecodeFleetConfig(data []byte) (FleetConfig, error) {
	var c FleetConfig
	if len(data) > MaxConfigSize {
		return c, fmt.Errorf("document: %d bytes, larger than %d", len(data), MaxConfigSize)
	}
	var v struct {
		Version *int `json:"version"`
	}
	if err := json.Unmarshal(data, &v); err != nil {
		return c, fmt.Errorf("document: not JSON: %v", err)
	}
	if v.Version == nil {
		return c, errors.New("version: missing; a fleet configuration says \"version\": 1")
	}
	if *v.Version != ConfigVersion {
		return c, fmt.Errorf("version %d: this broker reads version %d; a newer broker wrote it, upgrade this one", *v.Version, ConfigVersion)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return c, fmt.Errorf("%s: got a JSON %s, want a %s", cmp.Or(te.Field, "document"), te.Value, te.Type)
		}
		if f, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			return c, fmt.Errorf("%s: unknown field; is the document for another version?", f)
		}
		return c, fmt.Errorf("document: %v", err)
	}
	if dec.More() {
		return c, errors.New("document: trailing data after the JSON object")
	}
	if len(c.Files) > maxFiles {
		c.Files = c.Files[len(c.Files)-maxFiles:]
	}
	c.By, c.Source = clip(c.By), clip(c.Source)
	for _, p := range c.Pools {
		for _, r := range p.Routers {
			if r.Price != nil && r.Price.CachedInput == nil {
				// Said as NewFleetConfig says it, so that the same prices
				// are the same document.
				r.Price.CachedInput = &r.Price.Input
			}
		}
	}
	if _, _, _, err := c.Settings(); err != nil {
		return c, err
	}
	return c, nil
}

func clip(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}

// ConfigEntry is one revision of the document.
type ConfigEntry struct {
	Revision uint64
	Created  time.Time
	Config   FleetConfig
	// Err says why the revision is refused; Config is then what could be
	// read of it.
	Err error
	// Deleted marks a revision that deleted the key.
	Deleted bool
	// Raw is the revision as written, for showing one that is refused.
	Raw []byte
}

// ConfigStore reads and writes the fleet's configuration.
type ConfigStore struct {
	js       jetstream.JetStream
	bucket   string
	replicas int // of the bucket when created; 0: 1
}

// ConfigOption sets how the configuration bucket is created.
type ConfigOption func(*ConfigStore)

// ConfigReplicas creates the bucket with n replicas, as the health
// bucket (3 on a NATS cluster).
func ConfigReplicas(n int) ConfigOption { return func(s *ConfigStore) { s.replicas = n } }

// OpenConfig opens the configuration bucket, creating it when create is
// set; without create a missing bucket gives ErrNoBucket.
func OpenConfig(ctx context.Context, js jetstream.JetStream, bucket string, create bool, opts ...ConfigOption) (*ConfigStore, error) {
	s := &ConfigStore{js: js, bucket: bucket}
	for _, o := range opts {
		o(s)
	}
	_, err := s.kv(ctx, create)
	return s, err
}

func (s *ConfigStore) kv(ctx context.Context, create bool) (jetstream.KeyValue, error) {
	kv, err := s.js.KeyValue(ctx, s.bucket)
	if err == nil {
		return kv, nil
	}
	if !errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, noJetStream(err)
	}
	if !create {
		return nil, fmt.Errorf("%w: %s", ErrNoBucket, s.bucket)
	}
	// Create, not CreateOrUpdate: the least privilege grants
	// STREAM.CREATE, and a bucket another replica made meanwhile is opened.
	kv, err = s.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: s.bucket, History: ConfigHistory, Replicas: s.replicas,
		Description: "the broker fleet's configuration (broker config show)"})
	if errors.Is(err, jetstream.ErrBucketExists) {
		kv, err = s.js.KeyValue(ctx, s.bucket)
	}
	if err != nil {
		return nil, noJetStream(err)
	}
	return kv, nil
}

func entry(e jetstream.KeyValueEntry) ConfigEntry {
	ce := ConfigEntry{Revision: e.Revision(), Created: e.Created()}
	if e.Operation() != jetstream.KeyValuePut {
		ce.Deleted = true
		ce.Err = errors.New("document: deleted")
		return ce
	}
	ce.Raw = e.Value()
	ce.Config, ce.Err = DecodeFleetConfig(ce.Raw)
	return ce
}

// Latest returns the newest revision; Revision 0 when there is none.
func (s *ConfigStore) Latest(ctx context.Context) (ConfigEntry, error) {
	kv, err := s.kv(ctx, false)
	if err != nil {
		return ConfigEntry{}, err
	}
	e, err := getKey(ctx, s.js.Conn(), kv, ConfigKey, 0)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return ConfigEntry{}, nil
	}
	if err != nil {
		return ConfigEntry{}, err
	}
	return entry(e), nil
}

// Revision returns revision rev of the document.
func (s *ConfigStore) Revision(ctx context.Context, rev uint64) (ConfigEntry, error) {
	kv, err := s.kv(ctx, false)
	if err != nil {
		return ConfigEntry{}, err
	}
	e, err := getKey(ctx, s.js.Conn(), kv, ConfigKey, rev)
	if err != nil {
		return ConfigEntry{}, fmt.Errorf("revision %d: %w (the bucket keeps the last %d)", rev, err, ConfigHistory)
	}
	return entry(e), nil
}

// History returns the revisions the bucket keeps, oldest first.
func (s *ConfigStore) History(ctx context.Context) ([]ConfigEntry, error) {
	kv, err := s.kv(ctx, false)
	if err != nil {
		return nil, err
	}
	es, err := kv.History(ctx, ConfigKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []ConfigEntry
	for _, e := range es {
		out = append(out, entry(e))
	}
	return out, nil
}

// ConflictError is a write that lost: the document changed since the
// revision the writer read.
type ConflictError struct {
	Read   uint64      // the revision the writer read
	Latest ConfigEntry // what is there now (Revision 0: unknown)
}

func (e *ConflictError) Error() string {
	l := e.Latest
	if l.Revision == 0 {
		return fmt.Sprintf("the configuration changed since revision %d; read it again", e.Read)
	}
	return fmt.Sprintf("the configuration changed since revision %d: revision %d was written at %s by %s; read it again",
		e.Read, l.Revision, l.Created.UTC().Format(time.RFC3339), safetext.Line(cmp.Or(l.Config.By, "someone unnamed")))
}

func (e *ConflictError) Unwrap() error { return ErrConflict }

// Write stores c as a new revision if the document is still at read (0:
// there is none yet), carrying over the file hashes prev remembers, and
// returns the new revision. A lost race gives a *ConflictError.
func (s *ConfigStore) Write(ctx context.Context, c FleetConfig, read uint64, prev *FleetConfig) (uint64, error) {
	kv, err := s.kv(ctx, true)
	if err != nil {
		return 0, err
	}
	c.Version = ConfigVersion
	if c.At.IsZero() {
		c.At = time.Now().UTC()
	}
	if prev != nil {
		files := slices.Clone(prev.Files)
		for _, f := range c.Files {
			if !slices.Contains(files, f) {
				files = append(files, f)
			}
		}
		c.Files = files
	}
	if len(c.Files) > maxFiles {
		c.Files = c.Files[len(c.Files)-maxFiles:]
	}
	if _, _, _, err := c.Settings(); err != nil {
		return 0, err
	}
	data, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return 0, err
	}
	if len(data) > MaxConfigSize {
		return 0, fmt.Errorf("document: %d bytes, larger than %d", len(data), MaxConfigSize)
	}
	var rev uint64
	if read == 0 {
		rev, err = kv.Create(ctx, ConfigKey, data)
	} else {
		rev, err = kv.Update(ctx, ConfigKey, data, read)
	}
	if err != nil {
		var apiErr *jetstream.APIError
		if errors.Is(err, jetstream.ErrKeyExists) || (errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence) {
			latest, _ := s.Latest(ctx)
			return 0, &ConflictError{Read: read, Latest: latest}
		}
		return 0, err
	}
	return rev, nil
}
