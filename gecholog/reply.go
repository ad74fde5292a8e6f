package gecholog

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Reply is the request-context answer that sends a call to router. Pools
// hold only gecholog router paths (letters, digits and /), which need no
// escaping; anything else goes through encoding/json.
func Reply(router string) []byte {
	for i := 0; i < len(router); i++ {
		if c := router[i]; c < ' ' || c >= utf8.RuneSelf || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			b, _ := json.Marshal(map[string]string{"gl_path": router}) // a map of strings always encodes
			return b
		}
	}
	b := make([]byte, 0, len(`{"gl_path":""}`)+len(router))
	b = append(b, `{"gl_path":"`...)
	b = append(b, router...)
	return append(b, `"}`...)
}

// RetryAfter reads the upstream's Retry-After from gecholog's
// inbound_headers (header name to a list of values, names in any case):
// delay-seconds or an HTTP date. It returns 0 when there is none or it
// cannot be read, and at least a nanosecond for a date already past, which
// the policy then raises to its one-second floor. Only a 429 or 503 needs
// it, so encoding/json's cost does not matter.
func RetryAfter(headers []byte, now time.Time) time.Duration {
	if len(headers) == 0 {
		return 0
	}
	var h map[string][]string
	if json.Unmarshal(headers, &h) != nil {
		return 0
	}
	for name, values := range h {
		if !strings.EqualFold(name, "Retry-After") || len(values) == 0 {
			continue
		}
		v := strings.TrimSpace(values[0])
		if secs, err := strconv.ParseInt(v, 10, 64); err == nil && secs >= 0 {
			return max(time.Duration(min(secs, 1<<32))*time.Second, 1)
		}
		if t, err := http.ParseTime(v); err == nil {
			return max(t.Sub(now), 1)
		}
		return 0
	}
	return 0
}
