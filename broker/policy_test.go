package broker

import (
	"math"
	"testing"
	"time"

	"github.com/matryer/is"
)

const dt = 10 * time.Minute

func policy(t *testing.T, p Policy) Policy {
	t.Helper()
	if p.DisabledTime == 0 {
		p.DisabledTime = dt
	}
	p, err := p.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestBackoffScheduleDoublesUpToTheCap(t *testing.T) {
	for _, tc := range []struct {
		name       string
		mult, capm float64
		want       []time.Duration // by level 0, 1, 2, ...
	}{
		{"default ×2 capped at ×8", 0, 0, []time.Duration{dt, 2 * dt, 4 * dt, 8 * dt, 8 * dt, 8 * dt}},
		{"×3 capped at ×10", 3, 10, []time.Duration{dt, 3 * dt, 9 * dt, 10 * dt, 10 * dt}},
		{"no backoff", 1, 8, []time.Duration{dt, dt, dt}},
		{"cap 1", 2, 1, []time.Duration{dt, dt}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			is := is.New(t)
			p := policy(t, Policy{Multiplier: tc.mult, MaxMultiplier: tc.capm})
			for level, want := range tc.want {
				is.Equal(p.Duration(min(level, p.maxLevel())), want) // duration at this level
			}
		})
	}
}

func TestLevelOfANewDisableFollowsTheLastOneAndDecays(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		name string
		memo Record
		want int
	}{
		{"never disabled", Record{}, 0},
		{"only failures counted", Record{Failures: 2}, 0},
		{"recovered just now from level 0", Record{Level: 0, Ended: now}, 1},
		{"recovered just now from level 2", Record{Level: 2, Ended: now}, 3},
		{"at the cap stays at the cap", Record{Level: 3, Ended: now}, 3},
		{"one disabled time of service: one level less", Record{Level: 2, Ended: now.Add(-dt)}, 2},
		{"served long enough: back to the start", Record{Level: 2, Ended: now.Add(-3 * dt)}, 0},
		{"level 0 served one disabled time: recovered", Record{Level: 0, Ended: now.Add(-dt)}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			is.New(t).Equal(policy(t, Policy{}).level(tc.memo, now), tc.want)
		})
	}
}

// fail is the first failure of a router since its last success.
func fail(status int, at time.Time) event {
	return event{kind: failure, status: status, at: at, by: "r1", failures: 1}
}

func TestThresholdDisablesAtTheNthConsecutiveFailureAndWritesNothingBefore(t *testing.T) {
	is := is.New(t)
	p := policy(t, Policy{Threshold: 3})
	now := time.Now()
	for n := 1; n <= 2; n++ {
		ev := fail(502, now)
		ev.failures = n
		_, ok := p.decide("/r/", nil, Record{}, ev)
		is.True(!ok) // counted by the replicas, which tell each other: nothing written
	}
	_, ok := p.decide("/r/", nil, Record{}, event{kind: success, at: now})
	is.True(!ok) // nor for a success
	ev := fail(502, now)
	ev.failures = 3
	ch, ok := p.decide("/r/", nil, Record{}, ev)
	is.True(ok && !ch.release) // the third consecutive failure disables
	is.Equal(ch.rec.Until, now.Add(dt))
	is.Equal(ch.rec.Reason, "egress_status_code 502")
}

func TestTheFailureRateRuleDisablesAndSaysSo(t *testing.T) {
	is := is.New(t)
	p := policy(t, Policy{Threshold: 5, Rate: 20})
	now := time.Now()
	ev := fail(502, now)
	ev.rate = &rateFigures{failures: 15, calls: 48, window: time.Minute}
	ch, ok := p.decide("/r/", nil, Record{}, ev)
	is.True(ok && !ch.release) // a disable is decided, not an enable
	is.Equal(ch.rec.Reason, "failure rate 31% of 48 calls in 1m0s")
	is.Equal(ch.rec.Until, now.Add(dt)) // the same policy as any disable
	is.Equal(ch.rec.Status, 502)
}

func TestWithDisabledTimeZeroAFailureNeverDisables(t *testing.T) {
	is := is.New(t)
	p := policy(t, Policy{NeverDisable: true})
	now := time.Now()
	ev := fail(502, now)
	ev.retryAfter = time.Minute
	ev.rate = &rateFigures{failures: 10, calls: 10, window: time.Minute}
	_, ok := p.decide("/r/", nil, Record{}, ev)
	is.True(!ok) // nothing changes
	_, ok = p.decide("/r/", &Record{Router: "/r/", At: now, Until: now.Add(-time.Second)}, Record{}, ev)
	is.True(!ok) // nor a probe's failure
}

func TestAReportThatChangesNothingWritesNothing(t *testing.T) {
	is := is.New(t)
	p := policy(t, Policy{})
	now := time.Now()
	disabled := &Record{Router: "/r/", At: now, Until: now.Add(dt)}
	_, ok := p.decide("/r/", disabled, Record{}, fail(502, now.Add(time.Second)))
	is.True(!ok) // a failure of a disabled router: the same outage
	_, ok = p.decide("/r/", disabled, Record{}, event{kind: success, at: now})
	is.True(!ok) // a late success while disabled
	_, ok = p.decide("/r/", nil, Record{}, event{kind: success, at: now})
	is.True(!ok) // success of a healthy router
}

func TestRetryAfterSetsTheDisableAndOnlyEverExtendsIt(t *testing.T) {
	is := is.New(t)
	p := policy(t, Policy{})
	now := time.Now()
	ev := fail(429, now)
	ev.retryAfter = 30 * time.Second
	ch, _ := p.decide("/r/", nil, Record{}, ev)
	is.Equal(ch.rec.Until, now.Add(30*time.Second)) // as long as the upstream asked

	ev.retryAfter = time.Millisecond
	ch, _ = p.decide("/r/", nil, Record{}, ev)
	is.Equal(ch.rec.Until, now.Add(time.Second)) // at least a second

	ev.retryAfter = 1000 * time.Hour
	ch, _ = p.decide("/r/", nil, Record{}, ev)
	is.Equal(ch.rec.Until, now.Add(8*dt)) // at most the cap

	live := &Record{Router: "/r/", At: now, Until: now.Add(time.Minute)}
	ev.retryAfter = 30 * time.Second
	_, ok := p.decide("/r/", live, Record{}, ev)
	is.True(!ok) // a shorter deadline never shortens the disable
	ev.retryAfter = 5 * time.Minute
	ch, ok = p.decide("/r/", live, Record{}, ev)
	is.True(ok) // a later one extends it
	is.Equal(ch.rec.Until, now.Add(5*time.Minute))
}

func TestProbeIsClaimedOnceAndDecidesTheRoutersFate(t *testing.T) {
	is := is.New(t)
	p := policy(t, Policy{})
	now := time.Now()
	ended := &Record{Router: "/r/", At: now.Add(-dt), Until: now.Add(-time.Millisecond), Level: 1}

	ch, ok := p.decide("/r/", ended, Record{}, event{kind: claim, by: "r1", at: now})
	is.True(ok) // the first claim wins
	is.Equal(ch.rec.Probe.By, "r1")
	is.Equal(ch.rec.Probe.Until, now.Add(2*time.Minute))
	claimed := ch.rec
	_, ok = p.decide("/r/", &claimed, Record{}, event{kind: claim, by: "r2", at: now})
	is.True(!ok) // a held claim is not taken
	ch, ok = p.decide("/r/", &claimed, Record{}, event{kind: claim, by: "r2", at: now.Add(3 * time.Minute)})
	is.True(ok) // a lapsed claim is
	is.Equal(ch.rec.Probe.By, "r2")

	ch, _ = p.decide("/r/", &claimed, Record{}, event{kind: success, at: now})
	is.True(ch.release) // success: enabled, the level kept in the memo to decay
	is.Equal(ch.rec.Level, 1)
	is.Equal(ch.rec.Ended, now)

	ch, _ = p.decide("/r/", &claimed, Record{}, fail(502, now))
	is.True(!ch.release) // failure: disabled at the next level
	is.Equal(ch.rec.Level, 2)
	is.Equal(ch.rec.Until, now.Add(4*dt))
}

func TestManualDisableIsNeverOverwrittenProbedOrLiftedEarly(t *testing.T) {
	is := is.New(t)
	p := policy(t, Policy{})
	now := time.Now()
	manual := &Record{Router: "/r/", Manual: true, At: now, Until: now.Add(time.Minute)}
	forever := &Record{Router: "/r/", Manual: true, At: now}
	for _, live := range []*Record{manual, forever} {
		for _, ev := range []event{fail(502, now), {kind: success, at: now}, {kind: claim, by: "r1", at: now.Add(2 * time.Minute)}} {
			_, ok := p.decide("/r/", live, Record{}, ev)
			is.True(!ok) // nothing automatic touches an active manual disable
		}
	}
	is.Equal(phase(forever, now.Add(10000*time.Hour)), Manual) // without Until: until enabled by hand
	is.Equal(phase(manual, now.Add(2*time.Minute)), Enabled)   // with Until: enabled then, never probed
	_, ok := p.decide("/r/", manual, Record{}, event{kind: claim, by: "r1", at: now.Add(2 * time.Minute)})
	is.True(!ok) // nothing changes
}

func TestPolicyRefusesOutOfRangeSettings(t *testing.T) {
	for _, p := range []Policy{
		{},
		{DisabledTime: -time.Second},
		{DisabledTime: 1}, // what DISABLED_TIME=1e-12 was
		{DisabledTime: MinDisabledTime - time.Millisecond}, // below the shortest
		{DisabledTime: dt, Threshold: -1},
		{DisabledTime: dt, Rate: -1},
		{DisabledTime: dt, Rate: 101},
		{DisabledTime: dt, Rate: 20, RateWindow: time.Millisecond},
		{DisabledTime: dt, Rate: 20, RateMinCalls: -1},
		{DisabledTime: dt, Multiplier: 0.5},
		{DisabledTime: dt, MaxMultiplier: 0.5},
		{DisabledTime: dt, ProbeTimeout: time.Millisecond},
		{DisabledTime: dt, AllDisabled: "sometimes"},
	} {
		_, err := p.Resolve()
		is.New(t).True(err != nil) // refused
	}
}

func TestALevelReadFromTheStoreIsHeldWithinZeroAndTheCap(t *testing.T) {
	p := policy(t, Policy{}) // ×2 capped at ×8: levels 0 to 3
	now := time.Now()
	for _, tc := range []struct {
		stored, want int
	}{
		{-1000000, 0}, {-1, 0}, {0, 0}, {2, 2}, {3, 3}, {4, 3}, {math.MaxInt, 3},
	} {
		is := is.New(t)
		rec := Record{Router: "/r/", At: now.Add(-time.Minute), Until: now.Add(-time.Second), Level: tc.stored}
		got, clamped := p.Clamp(Entry{Record: rec, Created: rec.At})
		is.Equal(got.Level, tc.want)            // held to the policy
		is.Equal(clamped, tc.stored != tc.want) // and said so
		live, _ := p.Clamp(Entry{Record: rec})
		ch, ok := p.decide("/r/", &live, Record{}, event{kind: failure, status: 502, at: now})
		is.True(ok)                                                    // a failed probe always disables
		is.Equal(ch.rec.Until.Sub(now), p.Duration(min(tc.want+1, 3))) // at the next level, never for nothing

		// A memo's level, with its disable just ended, sets the next one's.
		memo := Record{Router: "/r/", Level: tc.stored, Ended: now}
		ch, ok = p.decide("/r/", nil, memo, event{kind: failure, status: 502, at: now, failures: 1})
		is.True(ok)                               // a change is decided
		is.Equal(ch.rec.Level, min(tc.want+1, 3)) // not overflowed past the cap into a negative
	}
}
