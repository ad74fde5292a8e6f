package gecholog

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/gecholog/broker/broker"
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
	// Ingress is request.original_gl_path: the ingress router the client
	// called, which names the pool the call went through (its budget
	// counts the call). It is decoded and may share the message's memory;
	// nil when absent or null.
	Ingress []byte
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
	// Usage is the tokens the call used, as the upstream's answer
	// (response.inbound_payload) says them: unknown when it does not.
	Usage broker.Usage
	// Session is the key of the call's gecholog session: the first three
	// parts of the root's session_id (GATEWAYID_UNIXNANO_COUNT_TRANSACTION),
	// as SessionKey makes it from the session header, so that the first
	// call of a session, which had no header, keys alike. It shares the
	// message's memory; nil when session_id is absent, not a plain string
	// (null, another type, JSON escapes), longer than
	// broker.MaxSessionKey, or not a session id. A bad session_id is no
	// session and never an error: the rest of the transaction counts.
	Session []byte
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
//		SessionID json.RawMessage `json:"session_id"`
//		Request *struct {
//			GLPath         *string `json:"gl_path"`
//			OriginalGLPath *string `json:"original_gl_path"`
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
//			Payload json.RawMessage `json:"inbound_payload"`
//		} `json:"response"`
//	}
//
// does, and gives the same values (a differential test and
// FuzzParseTransaction hold it to that): keys in any order, matched as
// encoding/json matches them, the last of duplicates winning; an object
// given twice merged as encoding/json merges it; null the same as absent.
//
// The payload, the upstream's answer, is read for its token usage only
// (see usage.go): whatever it holds is never a type error, and a usage
// that cannot be read is Usage's to say.
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
		Status: tx.status, HasStatus: tx.hasStatus, Headers: tx.headers, Usage: tx.usage,
		Session: sessionOfRaw(tx.session), Ingress: tx.ingress,
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
	ingress                 []byte // request.original_gl_path; nil: absent
	hasIngress              bool
	start, stop             time.Time // zero: absent
	duration                int
	hasDuration             bool
	status                  int
	hasStatus               bool
	headers                 []byte
	usage                   broker.Usage
	session                 []byte // session_id as sent, undecoded
}

// The keys read, at each level of the transaction.
var (
	txTop      = []string{"request", "response", "session_id"}
	txRequest  = []string{"gl_path", "original_gl_path"}
	txResponse = []string{"gl_path", "egress_status_code", "outbound_inbound_timer", "inbound_headers", "inbound_payload"}
	txTimer    = []string{"start", "stop", "duration"}
)

// scanTransaction fills tx from data. As encoding/json does, it checks the
// syntax of the whole input before it reports a field of the wrong type.
func scanTransaction(data []byte, tx *txFields) error {
	s := scanner{data: data, vague: true}
	return s.document("the transaction", func(key []byte, escaped bool) error {
		switch pick(key, escaped, txTop) {
		case 0:
			return s.nested(1, "request", tx.resetRequest, func(key []byte, escaped bool) error {
				switch pick(key, escaped, txRequest) {
				case 0:
					return s.str(2, "request.gl_path", &tx.reqPath, &tx.hasReqPath)
				case 1:
					return s.str(2, "request.original_gl_path", &tx.ingress, &tx.hasIngress)
				}
				return s.skip(2)
			})
		case 1:
			return s.nested(1, "response", tx.resetResponse, func(key []byte, escaped bool) error {
				return s.response(tx, key, escaped)
			})
		case 2:
			return s.raw(1, &tx.session)
		}
		return s.skip(1)
	})
}

// response reads one key of the transaction's response and its value.
func (s *scanner) response(tx *txFields, key []byte, escaped bool) error {
	switch pick(key, escaped, txResponse) {
	case 0:
		return s.str(2, "response.gl_path", &tx.respPath, &tx.hasRespPath)
	case 1:
		return s.whole(2, "response.egress_status_code", &tx.status, &tx.hasStatus)
	case 2:
		return s.nested(2, "response.outbound_inbound_timer", tx.resetTimer, func(key []byte, escaped bool) error {
			switch pick(key, escaped, txTimer) {
			case 0:
				return s.timestamp(3, "response.outbound_inbound_timer.start", &tx.start)
			case 1:
				return s.timestamp(3, "response.outbound_inbound_timer.stop", &tx.stop)
			case 2:
				return s.whole(3, "response.outbound_inbound_timer.duration", &tx.duration, &tx.hasDuration)
			}
			return s.skip(3)
		})
	case 3:
		return s.raw(2, &tx.headers)
	case 4:
		return s.payload(2, &tx.usage)
	}
	return s.skip(2)
}

// A null request, response or timer is a nil pointer to encoding/json:
// whatever was read of it before is gone.
func (tx *txFields) resetRequest() {
	tx.reqPath, tx.hasReqPath = nil, false
	tx.ingress, tx.hasIngress = nil, false
}

func (tx *txFields) resetResponse() {
	tx.respPath, tx.hasRespPath = nil, false
	tx.status, tx.hasStatus = 0, false
	tx.headers = nil
	tx.usage = broker.Usage{}
	tx.resetTimer()
}

func (tx *txFields) resetTimer() {
	tx.start, tx.stop = time.Time{}, time.Time{}
	tx.duration, tx.hasDuration = 0, false
}

// sessionOfRaw is the session key of a transaction's session_id as sent
// (see Transaction.Session); nil when it names none.
func sessionOfRaw(raw []byte) []byte {
	if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
		return nil // absent, null or not a string
	}
	v := raw[1 : len(raw)-1]
	for _, c := range v {
		if c == '\\' {
			return nil // escaped: no session id gecholog makes has one
		}
	}
	return SessionOfID(v)
}

// SessionOfID is the session key of a gecholog session id: its first
// three parts (GATEWAYID_UNIXNANO_COUNT of
// GATEWAYID_UNIXNANO_COUNT_TRANSACTION), sharing id's memory; nil when id
// is not four non-empty parts joined by '_', or is longer than
// broker.MaxSessionKey. SessionKey splits the session header alike.
func SessionOfID(id []byte) []byte {
	if len(id) == 0 || len(id) > broker.MaxSessionKey {
		return nil
	}
	parts, start, end := 0, 0, 0
	for i := 0; i <= len(id); i++ {
		if i < len(id) && id[i] != '_' {
			continue
		}
		if i == start {
			return nil // an empty part
		}
		parts++
		if parts == 3 {
			end = i
		}
		start = i + 1
	}
	if parts != 4 {
		return nil
	}
	return id[:end]
}
