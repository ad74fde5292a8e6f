package broker

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/matryer/is"
)

// TestResolveAcceptsEachPolicyRangeAndNothingBeyond holds Resolve to the
// ranges the broker command's flags read: both ends of each are accepted,
// and a value just beyond either end is refused.
func TestResolveAcceptsEachPolicyRangeAndNothingBeyond(t *testing.T) {
	nan := math.NaN()
	for _, tc := range []struct {
		name    string
		in, out []Policy
	}{
		{"threshold",
			[]Policy{{Threshold: ThresholdRange.Min}, {Threshold: ThresholdRange.Max}},
			[]Policy{{Threshold: -1}, {Threshold: ThresholdRange.Max + 1}}}, // 0 is the default
		{"failure rate",
			[]Policy{{Rate: RateRange.Min}, {Rate: RateRange.Max}},
			[]Policy{{Rate: RateRange.Min - 0.001}, {Rate: RateRange.Max + 0.001}, {Rate: nan}}},
		{"failure rate window",
			[]Policy{{RateWindow: RateWindowRange.Min}, {RateWindow: RateWindowRange.Max}},
			[]Policy{{RateWindow: RateWindowRange.Min - 1}, {RateWindow: RateWindowRange.Max + 1}}},
		{"failure rate min calls",
			[]Policy{{RateMinCalls: RateMinCallsRange.Min}, {RateMinCalls: RateMinCallsRange.Max}},
			[]Policy{{RateMinCalls: -1}, {RateMinCalls: RateMinCallsRange.Max + 1}}},
		{"backoff multiplier",
			[]Policy{{Multiplier: MultiplierRange.Min}, {Multiplier: MultiplierRange.Max}},
			[]Policy{{Multiplier: MultiplierRange.Min - 0.001}, {Multiplier: MultiplierRange.Max + 0.001}, {Multiplier: nan}}},
		{"backoff cap",
			[]Policy{{MaxMultiplier: MaxMultiplierRange.Min}, {MaxMultiplier: MaxMultiplierRange.Max}},
			[]Policy{{MaxMultiplier: MaxMultiplierRange.Min - 0.001}, {MaxMultiplier: MaxMultiplierRange.Max + 0.001}, {MaxMultiplier: nan}}},
		{"probe timeout",
			[]Policy{{ProbeTimeout: ProbeTimeoutRange.Min}, {ProbeTimeout: ProbeTimeoutRange.Max}},
			[]Policy{{ProbeTimeout: ProbeTimeoutRange.Min - 1}, {ProbeTimeout: ProbeTimeoutRange.Max + 1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			is := is.New(t)
			for _, p := range tc.in {
				p.DisabledTime = dt
				_, err := p.Resolve()
				is.NoErr(err) // an end of the range is accepted
			}
			for _, p := range tc.out {
				p.DisabledTime = dt
				if _, err := p.Resolve(); err == nil {
					t.Errorf("%+v: accepted, beyond the range", p)
				}
			}
		})
	}
}

// TestResolveFillsTheDefaults: a zero Policy but for its disabled time is
// the policy of the named defaults.
func TestResolveFillsTheDefaults(t *testing.T) {
	is := is.New(t)
	p, err := Policy{DisabledTime: DefaultDisabledTime}.Resolve()
	is.NoErr(err)
	is.Equal(p, Policy{DisabledTime: DefaultDisabledTime, Threshold: DefaultThreshold, RateWindow: DefaultRateWindow,
		RateMinCalls: DefaultRateMinCalls, Multiplier: DefaultMultiplier, MaxMultiplier: DefaultMaxMultiplier,
		ProbeTimeout: DefaultProbeTimeout, AllDisabled: DefaultAllDisabled}) // every zero field takes its default
}

func TestNewRefusesAnInFlightBoundOutOfRange(t *testing.T) {
	for _, bound := range []time.Duration{InFlightBoundRange.Min - 1, InFlightBoundRange.Max + 1} {
		b, err := New(Config{Pools: DefaultPools(), Policy: Policy{DisabledTime: dt}, InFlightBound: bound})
		if b != nil {
			b.Close(context.Background())
		}
		if err == nil {
			t.Errorf("in-flight bound %v: accepted, beyond %v", bound, InFlightBoundRange)
		}
	}
	for _, bound := range []time.Duration{0, InFlightBoundRange.Min, InFlightBoundRange.Max} { // 0: the default
		b, err := New(Config{Pools: DefaultPools(), Policy: Policy{DisabledTime: dt}, InFlightBound: bound})
		is.New(t).NoErr(err) // accepted
		b.Close(context.Background())
	}
}
