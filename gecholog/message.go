package gecholog

import (
	"errors"
	"fmt"
)

// Message is what gecholog sends a processor: the router in gl_path and,
// in the response context only, the status the client got.
type Message struct {
	Path      []byte // gl_path, decoded; it may share the message's memory
	HasPath   bool
	Status    int // egress_status_code
	HasStatus bool
	// Headers is inbound_headers exactly as sent, undecoded: only a 429
	// or 503 needs it, for Retry-After. nil when absent.
	Headers []byte
	// IngressHeaders is ingress_headers exactly as sent, undecoded: the
	// client's headers, its API key among them. Only a pool with
	// affinity reads it, one header of it (see SessionKey); never log or
	// keep it. nil when absent.
	IngressHeaders []byte
}

// Errors of Parse, for errors.Is.
var (
	// ErrMalformed is a message that is not one JSON object, or whose
	// fields have the wrong types: what encoding/json would refuse.
	ErrMalformed = errors.New("message is not a JSON object with a string gl_path and a number egress_status_code")
	// ErrNoPath is a message without gl_path.
	ErrNoPath = errors.New(`no "gl_path" string in the message; give the broker's processor entries "gl_path" in input_fields_include`)
)

// Parse reads gecholog's processor message. It is the broker's hot path,
// called for every LLM call twice, so it scans the bytes itself instead of
// using encoding/json, which costs several allocations and most of the
// broker's time per message. It accepts and rejects exactly what
// json.Unmarshal into
//
//	struct {
//		GLPath  *string         `json:"gl_path"`
//		Status  *int            `json:"egress_status_code"`
//		Headers json.RawMessage `json:"inbound_headers"`
//		IngressHeaders json.RawMessage `json:"ingress_headers"`
//	}
//
// does, and gives the same values (a differential test and FuzzParse hold
// it to that): one JSON object, surrounded by JSON white space at most;
// keys matched as encoding/json matches them, exactly or else
// case-insensitively with Unicode folding, and the last of duplicate keys
// wins; null for a field is the same as leaving it out; gl_path a string,
// with escapes and invalid UTF-8 decoded as encoding/json decodes them;
// egress_status_code a JSON number that is an integer as written (502.0
// and 5.02e2 are refused, as encoding/json refuses them for an int); other
// keys' values skipped but checked, to encoding/json's nesting limit.
//
// On top of that, gl_path must be present and egress_status_code, when
// present, an HTTP status.
//
// A message that breaks only those two rules is returned with its fields
// read; every other error wraps ErrMalformed.
func Parse(data []byte) (Message, error) {
	var m Message
	if err := scanMessage(data, &m); err != nil {
		return m, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if !m.HasPath {
		return m, ErrNoPath
	}
	if m.HasStatus && (m.Status < 100 || m.Status > 599) {
		return m, fmt.Errorf("egress_status_code %d is not an HTTP status", m.Status)
	}
	return m, nil
}

// msgKeys are the keys of the message read, in the order scanMessage
// picks them.
var msgKeys = []string{"gl_path", "egress_status_code", "inbound_headers", "ingress_headers"}

// scanMessage fills m from data. As encoding/json does, it checks the
// syntax of the whole input before it reports a field of the wrong type.
// It walks the members itself rather than handing a callback to
// scanner.object, as ParseTransaction does: on the hot path the callback
// cost Parse a sixth of its time (BenchmarkParse/request, 32 to 37 ns).
func scanMessage(data []byte, m *Message) error {
	s := scanner{data: data}
	if len(data) == 0 || data[0] != '{' { // gecholog sends '{' first
		if object, err := s.top("the message"); !object {
			return err
		}
	}
	for more := s.open(); more; {
		key, escaped, err := s.key()
		if err != nil {
			return err
		}
		switch msgKey(key, escaped) {
		case 0:
			err = s.str(1, "gl_path", &m.Path, &m.HasPath)
		case 1:
			err = s.whole(1, "egress_status_code", &m.Status, &m.HasStatus)
		case 2:
			err = s.raw(1, &m.Headers)
		case 3:
			err = s.raw(1, &m.IngressHeaders)
		default:
			err = s.skip(1)
		}
		if err != nil {
			return err
		}
		if more, err = s.more(); err != nil {
			return err
		}
	}
	return s.finish()
}

// msgKey is pick(key, escaped, msgKeys), with the keys gecholog sends
// matched first as constants, which the compiler compares in a few
// instructions.
func msgKey(key []byte, escaped bool) int {
	if !escaped {
		switch string(key) {
		case "gl_path":
			return 0
		case "egress_status_code":
			return 1
		case "inbound_headers":
			return 2
		case "ingress_headers":
			return 3
		}
	}
	return pick(key, escaped, msgKeys)
}
