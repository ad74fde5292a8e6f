package broker

import "time"

// The defaults of Policy, each defined here once: Resolve puts them in
// place of zero fields, and the broker command's flags and -h show them.
// FailureCodes' default is DefaultFailureCodes.
const (
	// DefaultDisabledTime is how long a failed router stays out at first:
	// the original broker's DISABLED_TIME default.
	DefaultDisabledTime  = 10 * time.Minute
	DefaultThreshold     = 1
	DefaultRate          = 0.0 // the failure-rate rule is off
	DefaultRateWindow    = time.Minute
	DefaultRateMinCalls  = 20
	DefaultMultiplier    = 2.0
	DefaultMaxMultiplier = 8.0
	DefaultProbeTimeout  = 2 * time.Minute
	DefaultAllDisabled   = Panic
)

// MinDisabledTime is the shortest disable: 60 ms, DISABLED_TIME 0.001.
// The record's Until is the truth, kept to the nanosecond, and the
// bucket's TTL only cleans up (rounded up to a whole second), so a
// fraction of a second works; but a disable shorter than this would end
// before a busy fleet hears of it, and a setting that rounds to less is a
// slip (1e-12 minutes), not a wish.
const MinDisabledTime = 60 * time.Millisecond

// The ranges of Policy's fields, each defined here once: Resolve refuses
// a value outside them, and the broker command's flags refuse it naming
// the setting. A Rate of 0 turns the failure-rate rule off.
var (
	ThresholdRange     = Range[int]{Min: 1, Max: 1000}
	RateRange          = Range[float64]{Min: 0, Max: 100}
	RateWindowRange    = Range[time.Duration]{Min: time.Second, Max: 24 * time.Hour}
	RateMinCallsRange  = Range[int]{Min: 1, Max: 1_000_000}
	MultiplierRange    = Range[float64]{Min: 1, Max: 100}
	MaxMultiplierRange = Range[float64]{Min: 1, Max: 1000}
	ProbeTimeoutRange  = Range[time.Duration]{Min: time.Second, Max: 24 * time.Hour}
)
