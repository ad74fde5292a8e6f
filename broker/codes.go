package broker

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// FailureCodes is the set of statuses the client got that count against
// the router: it is down, overloaded or misconfigured. The zero value is
// DefaultFailureCodes.
type FailureCodes struct {
	set  [10]uint64 // bit s: status s, 0..639
	text string     // as given, for messages
}

// DefaultFailureCodes are 5xx (gecholog itself answers 502, 503 and 504
// when the upstream cannot be reached), 429, 408, 401, 403 and 404. Other
// codes, such as 400, 413 and 422, are the client's own doing.
var DefaultFailureCodes = mustCodes("5xx,429,408,401,403,404")

func mustCodes(s string) FailureCodes {
	c, err := ParseFailureCodes(s)
	if err != nil {
		panic(err)
	}
	return c
}

// ParseFailureCodes reads a comma-separated list of statuses (429) and
// classes (5xx), each from 100 to 599.
func ParseFailureCodes(s string) (FailureCodes, error) {
	var c FailureCodes
	var parts []string
	for _, p := range strings.Split(s, ",") {
		p = strings.ToLower(strings.TrimSpace(p))
		switch {
		case len(p) == 3 && p[1:] == "xx" && p[0] >= '1' && p[0] <= '5':
			base := int(p[0]-'0') * 100
			for s := base; s < base+100; s++ {
				c.add(s)
			}
		case len(p) == 3 && isDigits(p):
			n, _ := strconv.Atoi(p)
			if n < 100 || n > 599 {
				return FailureCodes{}, fmt.Errorf("failure codes %q: %q is not an HTTP status (100 to 599)", s, p)
			}
			c.add(n)
		default:
			return FailureCodes{}, fmt.Errorf("failure codes %q: %q is neither a status such as 429 nor a class such as 5xx", s, p)
		}
		parts = append(parts, p)
	}
	c.text = strings.Join(parts, ",")
	return c, nil
}

func isDigits(s string) bool {
	return strings.IndexFunc(s, func(r rune) bool { return r < '0' || r > '9' }) < 0
}

func (c *FailureCodes) add(s int) { c.set[s/64] |= 1 << (s % 64) }

// Has reports whether status counts as a failure.
func (c FailureCodes) Has(status int) bool {
	if c.text == "" {
		c = DefaultFailureCodes
	}
	return status >= 0 && status < 640 && c.set[status/64]&(1<<(status%64)) != 0
}

// String is the codes as given, such as "5xx,429".
func (c FailureCodes) String() string {
	if c.text == "" {
		return DefaultFailureCodes.text
	}
	return c.text
}

// Statuses lists every status in the set, in order.
func (c FailureCodes) Statuses() []int {
	var out []int
	for s := 100; s < 600; s++ {
		if c.Has(s) {
			out = append(out, s)
		}
	}
	return slices.Clip(out)
}

// Failure reports whether a status counts as a failure by
// DefaultFailureCodes.
func Failure(status int) bool { return DefaultFailureCodes.Has(status) }
