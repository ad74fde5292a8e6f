package broker

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// message is what gecholog sends: the router in gl_path and, in the
// response context only, the status the client got.
type message struct {
	GLPath  *string         `json:"gl_path"`
	Status  *int            `json:"egress_status_code"`
	Headers json.RawMessage `json:"inbound_headers"`
}

var errNoPath = errors.New(`no "gl_path" string in the message; give the broker's processor entries "gl_path" in input_fields_include`)

func parse(data []byte) (message, error) {
	var m message
	if err := json.Unmarshal(data, &m); err != nil {
		return m, fmt.Errorf("message is not a JSON object with a string gl_path and a number egress_status_code: %w", err)
	}
	if m.GLPath == nil {
		return m, errNoPath
	}
	if m.Status != nil && (*m.Status < 100 || *m.Status > 599) {
		return m, fmt.Errorf("egress_status_code %d is not an HTTP status", *m.Status)
	}
	return m, nil
}

// Failure reports whether a status the client got means the router is down,
// overloaded or misconfigured: 5xx, 429, 408, 401, 403 and 404. Other codes,
// including 400, 413 and 422, are the client's own doing.
func Failure(status int) bool {
	switch status {
	case 401, 403, 404, 408, 429:
		return true
	}
	return status >= 500 && status <= 599
}

// reply is the request-context answer that sends a call to router.
func reply(router string) []byte {
	b, _ := json.Marshal(map[string]string{"gl_path": router}) // a map of strings always encodes
	return b
}

// retryAfter reads the upstream's Retry-After from gecholog's
// inbound_headers (header name to a list of values, names in any case):
// delay-seconds or an HTTP date. It returns 0 when there is none or it
// cannot be read, and at least a nanosecond for a date already past, which
// the policy then raises to its one-second floor.
func retryAfter(headers json.RawMessage, now time.Time) time.Duration {
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
