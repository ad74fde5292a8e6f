package gecholog_test

import (
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/gecholog"
)

func TestRateLimitsAreReadFromOpenAIsAndAnthropicsHeaders(t *testing.T) {
	at := time.Date(2026, 11, 28, 20, 25, 24, 500_000_000, time.UTC)
	// none is nothing said: every count negative, every reset zero.
	none := broker.RateLimits{RemainingRequests: -1, LimitRequests: -1, RemainingTokens: -1, LimitTokens: -1}
	with := func(f func(*broker.RateLimits)) broker.RateLimits { l := none; f(&l); return l }
	for _, tc := range []struct {
		name    string
		headers string
		want    broker.RateLimits
		bad     int // headers that cannot be read
	}{
		{"OpenAI, as gecholog logs it", `{"Content-Type":["application/json"],"X-Ratelimit-Limit-Requests":["100"],"X-Ratelimit-Limit-Tokens":["150000"],` +
			`"X-Ratelimit-Remaining-Requests":["99"],"X-Ratelimit-Remaining-Tokens":["149984"],"X-Ratelimit-Reset-Requests":["600ms"],"X-Ratelimit-Reset-Tokens":["6m0s"]}`,
			broker.RateLimits{RemainingRequests: 99, LimitRequests: 100, RemainingTokens: 149984, LimitTokens: 150000,
				ResetRequests: at.Add(600 * time.Millisecond), ResetTokens: at.Add(6 * time.Minute)}, 0},
		{"Azure OpenAI: remaining counts only", `{"X-Ratelimit-Remaining-Requests":["0"],"X-Ratelimit-Remaining-Tokens":["119000"]}`,
			with(func(l *broker.RateLimits) { l.RemainingRequests, l.RemainingTokens = 0, 119000 }), 0},
		{"Anthropic", `{"Anthropic-Ratelimit-Requests-Limit":["50"],"Anthropic-Ratelimit-Requests-Remaining":["0"],"Anthropic-Ratelimit-Requests-Reset":["2026-11-28T20:26:00Z"],` +
			`"Anthropic-Ratelimit-Tokens-Limit":["40000"],"Anthropic-Ratelimit-Tokens-Remaining":["39000"],"Anthropic-Ratelimit-Tokens-Reset":["2026-11-28T21:25:30+01:00"]}`,
			broker.RateLimits{RemainingRequests: 0, LimitRequests: 50, RemainingTokens: 39000, LimitTokens: 40000,
				ResetRequests: time.Date(2026, 11, 28, 20, 26, 0, 0, time.UTC), ResetTokens: time.Date(2026, 11, 28, 20, 25, 30, 0, time.UTC)}, 0},
		{"names in any case", `{"x-ratelimit-remaining-requests":["7"],"X-RATELIMIT-RESET-REQUESTS":["1s"],"anthropic-ratelimit-tokens-remaining":["8"]}`,
			with(func(l *broker.RateLimits) {
				l.RemainingRequests, l.ResetRequests, l.RemainingTokens = 7, at.Add(time.Second), 8
			}), 0},
		{"escaped names and values", `{"x-ratelimit-remaining-request\u0073":["\u0037"]}`,
			with(func(l *broker.RateLimits) { l.RemainingRequests = 7 }), 0},
		{"the first of several values", `{"X-Ratelimit-Remaining-Requests":["3","4"]}`,
			with(func(l *broker.RateLimits) { l.RemainingRequests = 3 }), 0},
		{"white space around a value", `{"X-Ratelimit-Remaining-Requests":[" 3\t"],"X-Ratelimit-Reset-Requests":[" 20ms "]}`,
			with(func(l *broker.RateLimits) { l.RemainingRequests, l.ResetRequests = 3, at.Add(20*time.Millisecond) }), 0},
		{"Go-like durations", `{"X-Ratelimit-Reset-Requests":["1m30.5s"],"X-Ratelimit-Reset-Tokens":["0s"]}`,
			with(func(l *broker.RateLimits) { l.ResetRequests, l.ResetTokens = at.Add(90500*time.Millisecond), at }), 0},
		{"the last of a name given twice", `{"x-ratelimit-remaining-requests":["1"],"X-Ratelimit-Remaining-Requests":["2"]}`,
			with(func(l *broker.RateLimits) { l.RemainingRequests = 2 }), 0},
		{"unreadable counts are ignored", `{"X-Ratelimit-Remaining-Requests":["-1"],"X-Ratelimit-Remaining-Tokens":["1.5"],"X-Ratelimit-Limit-Requests":["many"],` +
			`"X-Ratelimit-Limit-Tokens":["99999999999999999999"],"Anthropic-Ratelimit-Requests-Remaining":[""],"Anthropic-Ratelimit-Tokens-Remaining":["0x10"]}`, none, 6},
		{"unreadable resets are ignored", `{"X-Ratelimit-Reset-Requests":["60"],"X-Ratelimit-Reset-Tokens":["-1s"],` +
			`"Anthropic-Ratelimit-Requests-Reset":["in a minute"],"Anthropic-Ratelimit-Tokens-Reset":["Sat, 28 Nov 2026 20:26:00 GMT"]}`, none, 4},
		{"resets past what a time holds are unreadable", `{"X-Ratelimit-Remaining-Requests":["0"],"X-Ratelimit-Reset-Requests":["2500000h"],` +
			`"Anthropic-Ratelimit-Tokens-Remaining":["0"],"Anthropic-Ratelimit-Tokens-Reset":["2300-01-01T00:00:00Z"]}`,
			with(func(l *broker.RateLimits) { l.RemainingRequests, l.RemainingTokens = 0, 0 }), 2},
		{"resets far ahead within what a time holds are read (the broker bounds them)", `{"X-Ratelimit-Reset-Requests":["2000000h"],"Anthropic-Ratelimit-Tokens-Reset":["2200-01-01T00:00:00Z"]}`,
			with(func(l *broker.RateLimits) {
				l.ResetRequests, l.ResetTokens = at.Add(2000000*time.Hour), time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC)
			}), 0},
		{"a reset whose count is unreadable still counts", `{"X-Ratelimit-Remaining-Requests":["soon"],"X-Ratelimit-Reset-Requests":["2s"]}`,
			with(func(l *broker.RateLimits) { l.ResetRequests = at.Add(2 * time.Second) }), 1},
		{"values not a list of strings are ignored", `{"X-Ratelimit-Remaining-Requests":"5","X-Ratelimit-Remaining-Tokens":[5],` +
			`"X-Ratelimit-Limit-Requests":[],"X-Ratelimit-Limit-Tokens":null,"Anthropic-Ratelimit-Requests-Remaining":{"v":"5"}}`, none, 5},
		{"other headers say nothing", `{"Retry-After":["30"],"X-Ratelimit-Remaining":["5"],"Ratelimit-Remaining":["5"],"X-Ratelimit-Remaining-Requests-Extra":["5"]}`, none, 0},
		{"no headers", ``, none, 0},
		{"null", `null`, none, 0},
		{"not an object", `["X-Ratelimit-Remaining-Requests","5"]`, none, 0},
		{"not JSON", `{"X-Ratelimit-Remaining-Requests":["5"],`, none, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, bad := gecholog.RateLimits([]byte(tc.headers), at)
			is := is.New(t)
			is.Equal(bad, tc.bad) // headers that cannot be read
			is.Equal(got.RemainingRequests, tc.want.RemainingRequests)
			is.Equal(got.LimitRequests, tc.want.LimitRequests)
			is.Equal(got.RemainingTokens, tc.want.RemainingTokens)
			is.Equal(got.LimitTokens, tc.want.LimitTokens)
			is.True(got.ResetRequests.Equal(tc.want.ResetRequests)) // reset of requests
			is.True(got.ResetTokens.Equal(tc.want.ResetTokens))     // reset of tokens
		})
	}
}
