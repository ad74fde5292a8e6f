package gecholog

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Transaction is what the broker reads of one call in gecholog's
// transaction log: gecholog publishes every finished call, whole, as one
// JSON message on its logger subject (service_bus.topic_exact_logger,
// coburn.gl.logger in the seed config). Of the whole transaction, with
// its prompt and completion, only these few fields are read.
type Transaction struct {
	// Router is the router the call used: response.gl_path, or
	// request.gl_path when the response has none. It is decoded and may
	// share the message's memory.
	Router    []byte
	HasRouter bool
	// Start and Stop are response.outbound_inbound_timer's: when gecholog
	// called the upstream and when the answer came. Zero when absent (the
	// zero time itself reads as absent: no upstream answered then).
	Start, Stop time.Time
	// Duration is the timer's duration: whole milliseconds, truncated.
	Duration    time.Duration
	HasDuration bool
	// Status is response.egress_status_code: the status the client got.
	Status    int
	HasStatus bool
	// Headers is response.inbound_headers exactly as sent, undecoded (see
	// RateLimits); nil when absent.
	Headers []byte
}

// Latency is the upstream's time for the call: Stop − Start when the
// timer has both, which is exact, or else its duration, which gecholog
// truncates to whole milliseconds (so often 0 on a fast upstream). ok is
// false when the timer says neither, or runs backwards.
func (t Transaction) Latency() (d time.Duration, ok bool) {
	if !t.Start.IsZero() && !t.Stop.IsZero() {
		d = t.Stop.Sub(t.Start)
		return d, d >= 0
	}
	return t.Duration, t.HasDuration && t.Duration >= 0
}

// MaxTransaction is the largest transaction read: gecholog logs whole
// prompts and completions, and a message beyond this is ignored rather
// than scanned.
const MaxTransaction = 8 << 20

// Errors of ParseTransaction, for errors.Is.
var (
	// ErrTooLarge is a transaction longer than MaxTransaction.
	ErrTooLarge = errors.New("transaction longer than 8 MiB; not read")
	// ErrMalformedTransaction is a transaction that is not one JSON
	// object, or whose fields read have the wrong types: what
	// encoding/json would refuse.
	ErrMalformedTransaction = errors.New("transaction is not a JSON object with gecholog's request and response")
	// ErrNoRouter is a transaction without gl_path in its response or
	// request.
	ErrNoRouter = errors.New(`no "gl_path" string in the transaction's response or request`)
)

// ParseTransaction reads a transaction from gecholog's log. It scans the
// bytes once, as Parse does, skipping everything but the fields of
// Transaction: a payload of megabytes is stepped over, checked but never
// decoded. It accepts and rejects exactly what json.Unmarshal into
//
//	struct {
//		Request *struct {
//			GLPath *string `json:"gl_path"`
//		} `json:"request"`
//		Response *struct {
//			GLPath *string `json:"gl_path"`
//			Status *int    `json:"egress_status_code"`
//			Timer  *struct {
//				Start    *time.Time `json:"start"`
//				Stop     *time.Time `json:"stop"`
//				Duration *int       `json:"duration"`
//			} `json:"outbound_inbound_timer"`
//			Headers json.RawMessage `json:"inbound_headers"`
//		} `json:"response"`
//	}
//
// does, and gives the same values (a differential test and
// FuzzParseTransaction hold it to that): keys in any order, matched as
// encoding/json matches them, the last of duplicates winning; an object
// given twice merged as encoding/json merges it; null the same as absent.
//
// On top of that, a transaction must name a router, and one longer than
// MaxTransaction is not read at all (ErrTooLarge). A transaction that
// breaks only the first rule is returned with its fields read; every other
// error wraps ErrMalformedTransaction.
func ParseTransaction(data []byte) (Transaction, error) {
	if len(data) > MaxTransaction {
		return Transaction{}, ErrTooLarge
	}
	var tx txFields
	if err := scanTransaction(data, &tx); err != nil {
		return Transaction{}, fmt.Errorf("%w: %w", ErrMalformedTransaction, err)
	}
	t := Transaction{
		Start: tx.start, Stop: tx.stop, HasDuration: tx.hasDuration,
		Status: tx.status, HasStatus: tx.hasStatus, Headers: tx.headers,
	}
	if tx.hasDuration {
		t.Duration = millis(tx.duration)
	}
	switch {
	case tx.hasRespPath:
		t.Router, t.HasRouter = tx.respPath, true
	case tx.hasReqPath:
		t.Router, t.HasRouter = tx.reqPath, true
	default:
		return t, ErrNoRouter
	}
	return t, nil
}

// millis is n milliseconds, held within a Duration.
func millis(n int) time.Duration {
	switch {
	case n > math.MaxInt64/int(time.Millisecond):
		return math.MaxInt64
	case n < math.MinInt64/int(time.Millisecond):
		return math.MinInt64
	}
	return time.Duration(n) * time.Millisecond
}

// txFields are the fields scanned, as the struct in ParseTransaction's
// comment holds them.
type txFields struct {
	reqPath, respPath       []byte
	hasReqPath, hasRespPath bool
	start, stop             time.Time // zero: absent
	duration                int
	hasDuration             bool
	status                  int
	hasStatus               bool
	headers                 []byte
}

// The keys read, at each level of the transaction.
var (
	txTop      = []string{"request", "response"}
	txRequest  = []string{"gl_path"}
	txResponse = []string{"gl_path", "egress_status_code", "outbound_inbound_timer", "inbound_headers"}
	txTimer    = []string{"start", "stop", "duration"}
)

// scanTransaction fills tx from data. As encoding/json does, it checks the
// syntax of the whole input before it reports a field of the wrong type.
func scanTransaction(data []byte, tx *txFields) error {
	s := msgScanner{data: data}
	var typeErr error
	s.space()
	if s.i == len(data) {
		return s.fail("unexpected end of JSON input")
	}
	switch data[s.i] {
	case 'n': // encoding/json takes null as an object without fields
		if err := s.literal("null"); err != nil {
			return err
		}
	case '{':
		if err := s.object(func(key []byte, escaped bool) error {
			switch pick(key, escaped, txTop) {
			case 0:
				return s.nested(1, "request", tx.resetRequest, &typeErr, func(key []byte, escaped bool) error {
					if pick(key, escaped, txRequest) == 0 {
						return s.path(2, "request.gl_path", &tx.reqPath, &tx.hasReqPath, &typeErr)
					}
					return s.skip(2)
				})
			case 1:
				return s.nested(1, "response", tx.resetResponse, &typeErr, func(key []byte, escaped bool) error {
					return s.response(tx, key, escaped, &typeErr)
				})
			}
			return s.skip(1)
		}); err != nil {
			return err
		}
	default:
		if err := s.skip(0); err != nil {
			return err
		}
		if err := s.end(); err != nil {
			return err
		}
		return &jsonTypeError{field: "the transaction", want: "an object", got: "another JSON value"}
	}
	if err := s.end(); err != nil {
		return err
	}
	return typeErr
}

// response reads one key of the transaction's response and its value.
func (s *msgScanner) response(tx *txFields, key []byte, escaped bool, typeErr *error) error {
	switch pick(key, escaped, txResponse) {
	case 0:
		return s.path(2, "response.gl_path", &tx.respPath, &tx.hasRespPath, typeErr)
	case 1:
		return s.whole(2, "response.egress_status_code", &tx.status, &tx.hasStatus, typeErr)
	case 2:
		return s.nested(2, "response.outbound_inbound_timer", tx.resetTimer, typeErr, func(key []byte, escaped bool) error {
			switch pick(key, escaped, txTimer) {
			case 0:
				return s.timestamp(3, "response.outbound_inbound_timer.start", &tx.start, typeErr)
			case 1:
				return s.timestamp(3, "response.outbound_inbound_timer.stop", &tx.stop, typeErr)
			case 2:
				return s.whole(3, "response.outbound_inbound_timer.duration", &tx.duration, &tx.hasDuration, typeErr)
			}
			return s.skip(3)
		})
	case 3:
		// Kept as sent, like json.RawMessage, which keeps null as null.
		start := s.i
		if err := s.skip(2); err != nil {
			return err
		}
		tx.headers = s.data[start:s.i]
		return nil
	}
	return s.skip(2)
}

// A null request, response or timer is a nil pointer to encoding/json:
// whatever was read of it before is gone.
func (tx *txFields) resetRequest() { tx.reqPath, tx.hasReqPath = nil, false }

func (tx *txFields) resetResponse() {
	tx.respPath, tx.hasRespPath = nil, false
	tx.status, tx.hasStatus = 0, false
	tx.headers = nil
	tx.resetTimer()
}

func (tx *txFields) resetTimer() {
	tx.start, tx.stop = time.Time{}, time.Time{}
	tx.duration, tx.hasDuration = 0, false
}

// pick returns the index in names of the field key names, or -1. key is
// the key's raw text; escaped says it holds a backslash escape. names are
// lower-case ASCII letters and underscores, matched as encoding/json
// matches a struct's fields: exactly, or else case-insensitively with
// Unicode folding.
func pick(key []byte, escaped bool, names []string) int {
	if escaped {
		key = unquote(key)
	}
	for i, n := range names {
		if string(key) == n {
			return i
		}
	}
	for i, n := range names {
		if foldEqual(key, n) {
			return i
		}
	}
	return -1
}

// object reads the members of the object whose '{' is at s.i, handing
// each key to member with s.i at its value, which member must read.
func (s *msgScanner) object(member func(key []byte, escaped bool) error) error {
	s.i++
	s.space()
	if s.i < len(s.data) && s.data[s.i] == '}' {
		s.i++
		return nil
	}
	for {
		key, escaped, err := s.key()
		if err != nil {
			return err
		}
		s.space()
		if s.i == len(s.data) {
			return s.fail("unexpected end of JSON input")
		}
		if err := member(key, escaped); err != nil {
			return err
		}
		s.space()
		if s.i == len(s.data) {
			return s.fail("unexpected end of JSON input")
		}
		switch s.data[s.i] {
		case ',':
			s.i++
			s.space()
			continue
		case '}':
			s.i++
			return nil
		}
		return s.fail("invalid character " + quoteByte(s.data[s.i]) + " after object key:value pair")
	}
}

// nested reads the value at s.i, inside depth containers, as an object
// whose members member reads. null is reset, as encoding/json sets a nil
// pointer; an object given again is read over what the first gave, as
// encoding/json decodes into the pointer it already has.
func (s *msgScanner) nested(depth int, field string, reset func(), typeErr *error, member func(key []byte, escaped bool) error) error {
	switch s.data[s.i] {
	case 'n':
		reset()
		return s.literal("null")
	case '{':
		return s.object(member)
	}
	return s.mistyped(depth, field, "an object", typeErr)
}

// path reads a string value into *p.
func (s *msgScanner) path(depth int, field string, p *[]byte, has *bool, typeErr *error) error {
	switch s.data[s.i] {
	case 'n':
		*p, *has = nil, false
		return s.literal("null")
	case '"':
		raw, plain, err := s.string()
		if err != nil {
			return err
		}
		if !plain {
			raw = unquote(raw)
		}
		*p, *has = raw, true
		return nil
	}
	return s.mistyped(depth, field, "a string", typeErr)
}

// whole reads a number that encoding/json puts in an int into *n.
func (s *msgScanner) whole(depth int, field string, n *int, has *bool, typeErr *error) error {
	c := s.data[s.i]
	switch {
	case c == 'n':
		*n, *has = 0, false
		return s.literal("null")
	case c == '-' || '0' <= c && c <= '9':
		v, whole, err := s.number()
		if err != nil {
			return err
		}
		if !whole {
			if *typeErr == nil {
				*typeErr = &jsonTypeError{field: field, want: "a whole number", got: "a number with a fraction or exponent, or too large"}
			}
			return nil
		}
		*n, *has = v, true
		return nil
	}
	return s.mistyped(depth, field, "a number", typeErr)
}

// timestamp reads a time as encoding/json reads a *time.Time: null is absent,
// and anything else is handed to time.Time's UnmarshalJSON as it stands,
// quotes and all, which takes an RFC 3339 string without escapes.
func (s *msgScanner) timestamp(depth int, field string, t *time.Time, typeErr *error) error {
	start := s.i
	if err := s.skip(depth); err != nil {
		return err
	}
	raw := s.data[start:s.i]
	if raw[0] == 'n' {
		*t = time.Time{}
		return nil
	}
	var v time.Time
	if err := v.UnmarshalJSON(raw); err != nil {
		if *typeErr == nil {
			*typeErr = fmt.Errorf("%s: %w", field, err)
		}
		return nil
	}
	*t = v // 0001-01-01T00:00:00Z reads as absent: no upstream answered then
	return nil
}

// mistyped skips a value of the wrong type for field and records the
// first such error.
func (s *msgScanner) mistyped(depth int, field, want string, typeErr *error) error {
	if err := s.skip(depth); err != nil {
		return err
	}
	if *typeErr == nil {
		*typeErr = &jsonTypeError{field: field, want: want, got: "another JSON value"}
	}
	return nil
}
