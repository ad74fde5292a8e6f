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
	return parse(data, nil)
}

// parse is Parse, and for the handler, when k is not nil, the session
// key's header looked for on the way (see keyScan).
func parse(data []byte, k *keyScan) (Message, error) {
	var m Message
	if err := scanMessage(data, &m, k); err != nil {
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
func scanMessage(data []byte, m *Message, k *keyScan) error {
	s := scanner{data: data}
	if len(data) == 0 || data[0] != '{' { // gecholog sends '{' first
		if object, err := s.top("the message"); !object {
			return err
		}
	}
	for more := s.open(); more; {
		field := s.compactKey()
		if field == -2 {
			key, escaped, err := s.key()
			if err != nil {
				return err
			}
			field = msgKey(key, escaped)
		}
		var err error
		switch field {
		case 0:
			err = s.str(1, "gl_path", &m.Path, &m.HasPath)
			if k != nil {
				k.valid = false // for another gl_path
			}
		case 1:
			err = s.whole(1, "egress_status_code", &m.Status, &m.HasStatus)
		case 2:
			_, err = s.rawHeaders(1, &m.Headers, nil)
		case 3:
			if k == nil {
				_, err = s.rawHeaders(1, &m.IngressHeaders, nil)
				break
			}
			err = k.scan(&s, m)
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

// compactKey reads a key of msgKeys at s.i as gecholog writes it, with
// the colon after it, and the white space before its value as key does:
// it returns the key's index in msgKeys. -2: s.i holds another key, or
// the same in another form, and nothing is read; key reads it. It spares
// the hot path the scan of two keys of every message.
func (s *scanner) compactKey() int {
	d := s.data[s.i:]
	k, n := -2, 0
	if len(d) > 2 && d[0] == '"' {
		switch d[1] {
		case 'g':
			if len(d) >= 10 && string(d[:10]) == `"gl_path":` {
				k, n = 0, 10
			}
		// (Compared 16 bytes at most at a time, which the compiler
		// does in two loads; more is a call to memequal.)
		case 'e':
			if len(d) >= 21 && string(d[:16]) == `"egress_status_` && string(d[16:21]) == `code":` {
				k, n = 1, 21
			}
		case 'i':
			if len(d) >= 18 && string(d[16:18]) == `":` {
				switch string(d[:16]) {
				case `"inbound_headers`:
					k, n = 2, 18
				case `"ingress_headers`:
					k, n = 3, 18
				}
			}
		}
	}
	if k == -2 {
		return k
	}
	i := spaceAt(s.data, s.i+n)
	if i == len(s.data) {
		return -2 // key says what is wrong
	}
	s.i = i
	return k
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
