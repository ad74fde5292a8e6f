package broker

import (
	"fmt"
	"math"
	"time"
)

// AllDisabled says what a request for a pool gets when none of its routers
// is enabled.
type AllDisabled string

const (
	// Panic sends calls to the router whose disable ends soonest, as
	// Envoy's panic mode does: a call that may work beats one that cannot.
	Panic AllDisabled = "panic"
	// Ingress answers empty, so gecholog uses the ingress router's own
	// outbound: the original broker's behaviour.
	Ingress AllDisabled = "ingress"
	// Any chooses at random, by weight, among all the pool's routers.
	Any AllDisabled = "any"
)

// Policy decides when a router is disabled, for how long, and how it comes
// back. Zero fields take the defaults named on each (policy_defaults.go),
// and each field has a range there.
type Policy struct {
	// DisabledTime is the first disable's length (required unless
	// NeverDisable).
	DisabledTime time.Duration
	// NeverDisable means a failure never takes a router out: the original
	// broker's DISABLED_TIME=0. Calls are still spread and counted.
	NeverDisable bool
	// FailureCodes are the statuses that count as failures
	// (DefaultFailureCodes).
	FailureCodes FailureCodes
	// Threshold is how many consecutive failures, counted over every
	// replica, disable a router (DefaultThreshold).
	Threshold int
	// Rate, when above 0, disables a router when at least Rate percent
	// of its calls within RateWindow failed, counted over every replica,
	// given at least RateMinCalls calls in it: a rule for a busy, flaky
	// router that rarely fails Threshold times in a row. Whichever rule
	// fires first disables. DefaultRate, 0, is off.
	Rate         float64
	RateWindow   time.Duration // DefaultRateWindow
	RateMinCalls int           // DefaultRateMinCalls
	// Multiplier grows the disabled time each time a router is disabled
	// again before it has recovered (DefaultMultiplier; 1 turns backoff
	// off).
	Multiplier float64
	// MaxMultiplier caps the growth (DefaultMaxMultiplier), and so caps
	// Retry-After.
	MaxMultiplier float64
	// ProbeTimeout is how long a replica's claim on the half-open probe
	// lasts without a report before another probe may go
	// (DefaultProbeTimeout).
	ProbeTimeout time.Duration
	// AllDisabled is what a pool with no enabled router does
	// (DefaultAllDisabled).
	AllDisabled AllDisabled
}

// Resolve returns p with defaults in place of zero fields, or an error
// naming a field that is out of range.
func (p Policy) Resolve() (Policy, error) {
	if p.Threshold == 0 {
		p.Threshold = DefaultThreshold
	}
	if p.Multiplier == 0 {
		p.Multiplier = DefaultMultiplier
	}
	if p.MaxMultiplier == 0 {
		p.MaxMultiplier = DefaultMaxMultiplier
	}
	if p.ProbeTimeout == 0 {
		p.ProbeTimeout = DefaultProbeTimeout
	}
	if p.AllDisabled == "" {
		p.AllDisabled = DefaultAllDisabled
	}
	if p.RateWindow == 0 {
		p.RateWindow = DefaultRateWindow
	}
	if p.RateMinCalls == 0 {
		p.RateMinCalls = DefaultRateMinCalls
	}
	switch {
	case p.DisabledTime < MinDisabledTime && !p.NeverDisable:
		return p, fmt.Errorf("disabled time %v: must be at least %v (or set NeverDisable)", p.DisabledTime, MinDisabledTime)
	case !RateRange.Contains(p.Rate):
		return p, fmt.Errorf("failure rate %v: a percentage %v (0: off)", p.Rate, RateRange)
	case !RateWindowRange.Contains(p.RateWindow):
		return p, fmt.Errorf("failure rate window %v: must be %v", p.RateWindow, RateWindowRange)
	case !RateMinCallsRange.Contains(p.RateMinCalls):
		return p, fmt.Errorf("failure rate min calls %d: must be %v", p.RateMinCalls, RateMinCallsRange)
	case !ThresholdRange.Contains(p.Threshold):
		return p, fmt.Errorf("failure threshold %d: must be %v", p.Threshold, ThresholdRange)
	case !MultiplierRange.Contains(p.Multiplier):
		return p, fmt.Errorf("backoff multiplier %v: must be %v", p.Multiplier, MultiplierRange)
	case !MaxMultiplierRange.Contains(p.MaxMultiplier):
		return p, fmt.Errorf("backoff cap %v: must be %v", p.MaxMultiplier, MaxMultiplierRange)
	case !ProbeTimeoutRange.Contains(p.ProbeTimeout):
		return p, fmt.Errorf("probe timeout %v: must be %v", p.ProbeTimeout, ProbeTimeoutRange)
	}
	if _, err := ParseAllDisabled(string(p.AllDisabled)); err != nil {
		return p, err
	}
	return p, nil
}

// ParseAllDisabled reads the name of an all-disabled mode.
func ParseAllDisabled(s string) (AllDisabled, error) {
	switch m := AllDisabled(s); m {
	case Panic, Ingress, Any:
		return m, nil
	}
	return "", fmt.Errorf("all-disabled %q: panic, ingress or any", s)
}

// boundLevel is level within 0 and maxLevel: a level read from the store
// may have been written by hand. A negative one would make the next
// disable last next to nothing, and one past the cap means the cap.
func (p Policy) boundLevel(level int) int { return min(max(level, 0), p.maxLevel()) }

// maxLevel is the first backoff level whose multiplier reaches the cap.
func (p Policy) maxLevel() int {
	if p.Multiplier <= 1 {
		return 0
	}
	level := 0
	for math.Pow(p.Multiplier, float64(level)) < p.MaxMultiplier {
		level++
	}
	return level
}

// Duration is how long a disable at backoff level lasts.
func (p Policy) Duration(level int) time.Duration {
	m := math.Min(math.Pow(p.Multiplier, float64(level)), p.MaxMultiplier)
	return time.Duration(float64(p.DisabledTime) * m)
}

// maxDuration is the longest any automatic disable lasts.
func (p Policy) maxDuration() time.Duration {
	return time.Duration(float64(p.DisabledTime) * p.MaxMultiplier)
}

// level is the backoff level a new disable gets, given the memo of the
// router's last one: one more than what is left of the last level, which
// falls by one for each DisabledTime the router has served since, or 0 when
// it has fully recovered.
func (p Policy) level(memo Record, now time.Time) int {
	if memo.Ended.IsZero() || p.DisabledTime <= 0 {
		return 0
	}
	served := now.Sub(memo.Ended) / p.DisabledTime // negative for an Ended ahead of now: no more than the level
	left := p.boundLevel(memo.Level) - int(max(served, 0))
	if left < 0 {
		return 0
	}
	return min(left+1, p.maxLevel())
}

// Phase is where a router stands.
type Phase int

const (
	Enabled   Phase = iota // takes its share of calls
	Disabled               // out of its pools until its record's Until
	Probation              // disable over; waits for one probe call to succeed
	Manual                 // disabled by an operator; only an operator or Until ends it
)

func (ph Phase) String() string {
	return [...]string{"enabled", "disabled", "probation", "manual"}[ph]
}

// RecordPhase is the phase a router with the live record r is in at now,
// as every replica sees it.
func RecordPhase(r Record, now time.Time) Phase { return phase(&r, now) }

// phase of a router whose live record is r (nil: none) at now.
func phase(r *Record, now time.Time) Phase {
	switch {
	case r == nil:
		return Enabled
	case r.Manual && r.ActiveAt(now):
		return Manual
	case r.Manual:
		return Enabled // a manual disable that has run out
	case now.Before(r.Until):
		return Disabled
	}
	return Probation
}

// event is what happened to a router, as a replica heard it.
type event struct {
	kind       eventKind
	status     int
	retryAfter time.Duration // from the upstream's Retry-After; 0 without
	by         string        // the replica
	at         time.Time
	// failures is how many consecutive failures of the router the fleet
	// has heard of, this one included; rate is the failure-rate rule's
	// figures when it fires and the consecutive rule does not. Both for a
	// failure only.
	failures int
	rate     *rateFigures
}

// rateFigures say why the failure-rate rule fired.
type rateFigures struct {
	failures, calls int64
	window          time.Duration
}

type eventKind int

const (
	failure eventKind = iota
	success
	claim     // a replica asks for the probe of a router on probation
	carryOver // a replica that had no store shares a disable it holds
)

// change is what an event writes: a live record, or a memo left in the
// delete marker that enables the router.
type change struct {
	rec     Record
	release bool
}

// decide applies ev to a router whose live record is live (nil: none) and
// whose last memo is memo. It says what to write, or false when nothing
// changes. It is the whole failure policy, and pure.
func (p Policy) decide(router string, live *Record, memo Record, ev event) (change, bool) {
	ph := phase(live, ev.at)
	if ph == Enabled && live != nil {
		memo = Record{} // a manual disable ran out; it leaves no backoff
	}
	switch ev.kind {
	case failure:
		switch {
		case p.NeverDisable, ph == Manual:
			return change{}, false // a failure never takes a router out, or an operator's word stands
		}
		switch ph {
		case Disabled:
			// Calls that were in flight when the router was disabled fail
			// too; they are the same outage. Only a longer Retry-After
			// moves the deadline, and never earlier.
			if ev.retryAfter == 0 {
				return change{}, false
			}
			until := ev.at.Add(p.clampRetryAfter(ev.retryAfter))
			if !until.After(live.Until.Add(time.Second)) {
				return change{}, false
			}
			r := *live
			r.Until, r.Status, r.Reason, r.By = until, ev.status, reason(ev, ""), ev.by
			return change{rec: r}, true
		case Probation:
			return change{rec: p.disable(router, min(p.boundLevel(live.Level)+1, p.maxLevel()), ev, "probe failed: ")}, true
		}
		// Both rules count the fleet's calls, which the replicas tell each
		// other; nothing is written until one fires.
		if ev.failures < p.Threshold && ev.rate == nil {
			return change{}, false
		}
		return change{rec: p.disable(router, p.level(memo, ev.at), ev, "")}, true
	case success:
		if ph == Probation {
			return change{rec: Record{Router: router, Level: live.Level, Ended: ev.at,
				Reason: reasonProbeSucceeded, At: ev.at, By: ev.by}, release: true}, true
		}
	case claim:
		if ph == Probation && (live.Probe == nil || !ev.at.Before(live.Probe.Until)) {
			r := *live
			r.Probe = &Probe{By: ev.by, At: ev.at, Until: ev.at.Add(p.ProbeTimeout)}
			return change{rec: r}, true
		}
	}
	return change{}, false
}

func (p Policy) disable(router string, level int, ev event, prefix string) Record {
	d := p.Duration(level)
	if ev.retryAfter > 0 {
		d = p.clampRetryAfter(ev.retryAfter)
	}
	return Record{Router: router, Status: ev.status, Reason: reason(ev, prefix),
		At: ev.at, Until: ev.at.Add(d), By: ev.by, Level: level}
}

// The reasons of memos: a probe call succeeded, or a disable ran out
// with nobody probing the router (a store's clean-up writes it).
const (
	reasonProbeSucceeded = "probe succeeded"
	ReasonExpired        = "expired"
)

// Clamp returns e's record with times no automatic disable could have
// pulled back within the policy: an Until beyond the longest disable, or
// none at all, and a probe claim beyond the probe timeout, each counted
// from when the store kept the record. Such a record was written by hand
// or by a broken writer; taken at its word it would strand the router.
// A backoff level below 0 or past the cap is held to them. Manual records
// are an operator's word and kept as they are. clamped says whether
// anything changed.
func (p Policy) Clamp(e Entry) (r Record, clamped bool) {
	r = e.Record
	if r.Manual {
		return r, false
	}
	if l := p.boundLevel(r.Level); l != r.Level {
		r.Level, clamped = l, true
	}
	if e.Created.IsZero() {
		return r, clamped
	}
	const slack = time.Second // clocks of writer and store differ a little
	limit := e.Created.Add(p.maxDuration() + slack)
	if r.Until.IsZero() || r.Until.After(limit) {
		r.Until, clamped = limit, true
	}
	if r.Probe != nil && r.Probe.Until.After(e.Created.Add(p.ProbeTimeout+slack)) {
		probe := *r.Probe
		probe.Until, r.Probe, clamped = e.Created.Add(p.ProbeTimeout), &probe, true
	}
	return r, clamped
}

func (p Policy) clampRetryAfter(d time.Duration) time.Duration {
	return min(max(d, time.Second), p.maxWait())
}

// MaxWait is the longest an upstream's word keeps a router out, a
// Retry-After or a rate-limit reset with none left: DisabledTime ×
// MaxMultiplier of the resolved policy.
func (p Policy) MaxWait() time.Duration { return p.maxWait() }

// maxWait is the longest an upstream's word keeps a router out: a
// Retry-After, or a rate-limit reset with none left. It is the longest
// disable, or, when failures never disable, what it would be with the
// default disabled time.
func (p Policy) maxWait() time.Duration {
	if p.DisabledTime <= 0 {
		return time.Duration(float64(DefaultDisabledTime) * p.MaxMultiplier)
	}
	return p.maxDuration()
}

func reason(ev event, prefix string) string {
	if ev.rate != nil && prefix == "" {
		return fmt.Sprintf("failure rate %d%% of %d calls in %v", ev.rate.failures*100/ev.rate.calls, ev.rate.calls, ev.rate.window)
	}
	r := prefix + fmt.Sprintf("egress_status_code %d", ev.status)
	if ev.retryAfter > 0 {
		r += fmt.Sprintf(", Retry-After %v", ev.retryAfter)
	}
	return r
}
