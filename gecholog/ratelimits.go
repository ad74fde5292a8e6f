package gecholog

import (
	"time"

	"github.com/gecholog/broker/broker"
)

// rateHeader is a rate-limit header the broker reads, and what it says.
type rateHeader struct {
	name string // lower case; matched in any case
	set  func(l *broker.RateLimits, v []byte, at time.Time) bool
}

// rateHeaders are OpenAI's and Azure OpenAI's x-ratelimit-* (resets in
// Go-like durations from the answer, "1s", "6m0s", "20ms") and
// Anthropic's anthropic-ratelimit-* (resets as RFC 3339 times).
var rateHeaders = [...]rateHeader{
	{"x-ratelimit-remaining-requests", func(l *broker.RateLimits, v []byte, _ time.Time) bool { return count(v, &l.RemainingRequests) }},
	{"x-ratelimit-limit-requests", func(l *broker.RateLimits, v []byte, _ time.Time) bool { return count(v, &l.LimitRequests) }},
	{"x-ratelimit-reset-requests", func(l *broker.RateLimits, v []byte, at time.Time) bool { return after(v, at, &l.ResetRequests) }},
	{"x-ratelimit-remaining-tokens", func(l *broker.RateLimits, v []byte, _ time.Time) bool { return count(v, &l.RemainingTokens) }},
	{"x-ratelimit-limit-tokens", func(l *broker.RateLimits, v []byte, _ time.Time) bool { return count(v, &l.LimitTokens) }},
	{"x-ratelimit-reset-tokens", func(l *broker.RateLimits, v []byte, at time.Time) bool { return after(v, at, &l.ResetTokens) }},
	{"anthropic-ratelimit-requests-remaining", func(l *broker.RateLimits, v []byte, _ time.Time) bool { return count(v, &l.RemainingRequests) }},
	{"anthropic-ratelimit-requests-limit", func(l *broker.RateLimits, v []byte, _ time.Time) bool { return count(v, &l.LimitRequests) }},
	{"anthropic-ratelimit-requests-reset", func(l *broker.RateLimits, v []byte, _ time.Time) bool { return instant(v, &l.ResetRequests) }},
	{"anthropic-ratelimit-tokens-remaining", func(l *broker.RateLimits, v []byte, _ time.Time) bool { return count(v, &l.RemainingTokens) }},
	{"anthropic-ratelimit-tokens-limit", func(l *broker.RateLimits, v []byte, _ time.Time) bool { return count(v, &l.LimitTokens) }},
	{"anthropic-ratelimit-tokens-reset", func(l *broker.RateLimits, v []byte, _ time.Time) bool { return instant(v, &l.ResetTokens) }},
}

// RateLimits reads what an upstream's rate-limit headers say is left from
// gecholog's inbound_headers: an object of header name (in any case) to a
// list of values, of which the first counts. at is when the upstream
// answered (the transaction's stop time), from which OpenAI's resets
// count. A count not said is negative and a reset not said zero; a header
// that cannot be read is ignored and counted in bad (a reset past what a
// time holds, the year 2262, is such a header), and headers that are not
// such an object say nothing.
func RateLimits(headers []byte, at time.Time) (l broker.RateLimits, bad int) {
	none := broker.RateLimits{RemainingRequests: -1, LimitRequests: -1, RemainingTokens: -1, LimitTokens: -1}
	l = none
	s := scanner{data: headers}
	s.space()
	if s.i == len(s.data) || s.data[s.i] != '{' {
		return none, 0
	}
	err := s.object(func(key []byte, escaped bool) error {
		if escaped {
			key = unquote(key)
		}
		start := s.i
		if err := s.skip(1); err != nil {
			return err
		}
		for _, h := range rateHeaders {
			if asciiEqualFold(key, h.name) {
				if v, ok := firstString(s.data[start:s.i]); !ok || !h.set(&l, v, at) {
					bad++
				}
				break
			}
		}
		return nil
	})
	if err != nil || s.end() != nil {
		return none, 0
	}
	return l, bad
}

// quotaBack is how long a 429 keeps its router out: retryAfter, or, when
// the answer's rate-limit headers say a count ran out and when it is full
// again, that reset if it comes sooner (the later of two counts that ran
// out). OpenAI and Azure OpenAI say Retry-After in whole seconds rounded
// up but x-ratelimit-reset-* to the millisecond: a disable of the rounded
// Retry-After keeps a router out up to a second after its quota is back,
// and a quota window that opens with the first call after the last ended
// then starts that much later, every window. The response context is sent
// as the answer arrives, so its time stands for the answer's.
func quotaBack(headers []byte, now time.Time, retryAfter time.Duration) time.Duration {
	l, _ := RateLimits(headers, now)
	var back time.Time
	if l.RemainingRequests == 0 && l.ResetRequests.After(now) {
		back = l.ResetRequests
	}
	if l.RemainingTokens == 0 && l.ResetTokens.After(back) {
		back = l.ResetTokens
	}
	if back.After(now) && (retryAfter <= 0 || back.Sub(now) < retryAfter) {
		return back.Sub(now)
	}
	return retryAfter
}

// firstString is the first value of a header's list of values, which
// skip has checked is JSON: the first element of an array, when it is a
// string.
func firstString(list []byte) (v []byte, ok bool) {
	s := scanner{data: list}
	if s.data[0] != '[' {
		return nil, false
	}
	s.i++
	s.space()
	if s.data[s.i] != '"' {
		return nil, false
	}
	raw, plain, err := s.string()
	if err != nil {
		return nil, false
	}
	if !plain {
		raw = unquote(raw)
	}
	return raw, true
}

// asciiEqualFold reports whether key is name, which is lower case, with
// ASCII letters in any case: header names are ASCII tokens.
func asciiEqualFold(key []byte, name string) bool {
	if len(key) != len(name) {
		return false
	}
	for i := range len(key) {
		c := key[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != name[i] {
			return false
		}
	}
	return true
}

// trim drops the white space HTTP allows around a field value.
func trim(v []byte) []byte {
	for len(v) > 0 && (v[0] == ' ' || v[0] == '\t') {
		v = v[1:]
	}
	for len(v) > 0 && (v[len(v)-1] == ' ' || v[len(v)-1] == '\t') {
		v = v[:len(v)-1]
	}
	return v
}

// count reads a count of requests or tokens: digits only.
func count(v []byte, n *int64) bool {
	v = trim(v)
	if len(v) == 0 || len(v) > 18 { // 18 digits always fit an int64
		return false
	}
	var x int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return false
		}
		x = x*10 + int64(c-'0')
	}
	*n = x
	return true
}

// after reads OpenAI's reset, a Go-like duration from at.
func after(v []byte, at time.Time, t *time.Time) bool {
	d, err := time.ParseDuration(string(trim(v)))
	if err != nil || d < 0 {
		return false
	}
	return held(at.Add(d), t)
}

// instant reads Anthropic's reset, an RFC 3339 time.
func instant(v []byte, t *time.Time) bool {
	r, err := time.Parse(time.RFC3339, string(trim(v)))
	if err != nil {
		return false
	}
	return held(r, t)
}

// held sets *t to r when r is within what the broker's clocks hold, unix
// nanoseconds (the years 1678 to 2262): a reset beyond is bad input, not
// a date to wait for (the broker holds any reset within its longest
// disable).
func held(r time.Time, t *time.Time) bool {
	if !time.Unix(0, r.UnixNano()).Equal(r) {
		return false
	}
	*t = r
	return true
}
