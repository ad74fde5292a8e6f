package gecholog

import (
	"errors"
	"fmt"
	"strconv"
	"unicode"
	"unicode/utf8"
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

// maxDepth is encoding/json's limit on nested objects and arrays.
const maxDepth = 10000

// jsonSyntaxError says where a message stops being JSON.
type jsonSyntaxError struct {
	msg string
	off int
}

func (e *jsonSyntaxError) Error() string { return e.msg + " at offset " + strconv.Itoa(e.off) }

// jsonTypeError is JSON that is valid but holds the wrong type for a field.
type jsonTypeError struct{ field, want, got string }

func (e *jsonTypeError) Error() string {
	return "cannot read " + e.got + " into " + e.field + ", which is " + e.want
}

// msgScanner walks a message. Its methods leave i on the first byte they did
// not consume.
type msgScanner struct {
	data []byte
	i    int
}

// scanMessage fills m from data. As encoding/json does, it checks the
// syntax of the whole input before it reports a field of the wrong type.
func scanMessage(data []byte, m *Message) error {
	s := msgScanner{data: data}
	var typeErr error
	s.space()
	if s.i == len(data) {
		return s.fail("unexpected end of JSON input")
	}
	if data[s.i] == 'n' {
		// encoding/json takes a null message as one without fields; parse
		// then finds no gl_path.
		if err := s.literal("null"); err != nil {
			return err
		}
		return s.end()
	}
	if data[s.i] != '{' {
		if err := s.skip(0); err != nil {
			return err
		}
		if err := s.end(); err != nil {
			return err
		}
		return &jsonTypeError{field: "the message", want: "an object", got: "another JSON value"}
	}
	s.i++
	s.space()
	if s.i < len(data) && data[s.i] == '}' {
		s.i++
		return s.end()
	}
	for {
		key, escaped, err := s.key()
		if err != nil {
			return err
		}
		if err := s.value(m, match(key, escaped), &typeErr); err != nil {
			return err
		}
		s.space()
		if s.i == len(data) {
			return s.fail("unexpected end of JSON input")
		}
		switch data[s.i] {
		case ',':
			s.i++
			s.space()
			continue
		case '}':
			s.i++
			if err := s.end(); err != nil {
				return err
			}
			return typeErr
		}
		return s.fail("invalid character " + quoteByte(data[s.i]) + " after object key:value pair")
	}
}

// msgField is a key of the message the broker reads.
type msgField int

const (
	fieldOther msgField = iota
	fieldPath
	fieldStatus
	fieldHeaders
)

var fieldNames = [...]string{fieldPath: "gl_path", fieldStatus: "egress_status_code", fieldHeaders: "inbound_headers"}

// match finds the field a key names. key is the key's raw text between
// its quotes; escaped says whether it holds a backslash escape.
func match(key []byte, escaped bool) msgField {
	if escaped {
		key = unquote(key)
	}
	switch string(key) {
	case "gl_path":
		return fieldPath
	case "egress_status_code":
		return fieldStatus
	case "inbound_headers":
		return fieldHeaders
	}
	// encoding/json falls back to a case-insensitive match; gecholog
	// always sends these keys in lower case, but take "GL_PATH" as
	// encoding/json would rather than be the odd one out.
	for f := fieldPath; f <= fieldHeaders; f++ {
		if foldEqual(key, fieldNames[f]) {
			return f
		}
	}
	return fieldOther
}

// foldEqual reports whether key equals name, which is lower-case ASCII
// letters and underscores, under encoding/json's folding: each rune folds
// to the smallest rune of its Unicode case-folding orbit, so that, for
// instance, U+017F (ſ) matches s, as encoding/json matches it.
func foldEqual(key []byte, name string) bool {
	j := 0
	for i := 0; i < len(key); {
		if j == len(name) {
			return false
		}
		c := key[i]
		if c < utf8.RuneSelf {
			i++
		} else {
			r, n := utf8.DecodeRune(key[i:])
			i += n
			f := foldRune(r)
			if f >= utf8.RuneSelf {
				return false
			}
			c = byte(f)
		}
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != name[j] {
			return false
		}
		j++
	}
	return j == len(name)
}

// foldRune is encoding/json's: the smallest rune of r's folding orbit.
func foldRune(r rune) rune {
	for {
		r2 := unicode.SimpleFold(r)
		if r2 <= r {
			return r2
		}
		r = r2
	}
}

// value reads the value of a key into m when f is a field of the message,
// and skips it otherwise. A value of the wrong type is recorded in
// *typeErr (the first one only) and skipped.
func (s *msgScanner) value(m *Message, f msgField, typeErr *error) error {
	s.space()
	if s.i == len(s.data) {
		return s.fail("unexpected end of JSON input")
	}
	c := s.data[s.i]
	if c == 'n' && f != fieldOther && f != fieldHeaders {
		if err := s.literal("null"); err != nil {
			return err
		}
		// A pointer field is set to nil, as if the key were absent.
		switch f {
		case fieldPath:
			m.Path, m.HasPath = nil, false
		case fieldStatus:
			m.Status, m.HasStatus = 0, false
		}
		return nil
	}
	switch f {
	case fieldPath:
		if c == '"' {
			raw, plain, err := s.string()
			if err != nil {
				return err
			}
			if !plain {
				raw = unquote(raw)
			}
			m.Path, m.HasPath = raw, true
			return nil
		}
		return s.wrongType(f, "a string", typeErr)
	case fieldStatus:
		if c == '-' || '0' <= c && c <= '9' {
			n, whole, err := s.number()
			if err != nil {
				return err
			}
			if !whole {
				if *typeErr == nil {
					*typeErr = &jsonTypeError{field: fieldNames[f], want: "a whole number", got: "a number with a fraction or exponent, or too large"}
				}
				return nil
			}
			m.Status, m.HasStatus = n, true
			return nil
		}
		return s.wrongType(f, "a number", typeErr)
	case fieldHeaders:
		start := s.i
		if err := s.skip(1); err != nil {
			return err
		}
		m.Headers = s.data[start:s.i]
		return nil
	}
	return s.skip(1)
}

func (s *msgScanner) wrongType(f msgField, want string, typeErr *error) error {
	got := "a JSON value"
	switch s.data[s.i] {
	case '{':
		got = "an object"
	case '[':
		got = "an array"
	case '"':
		got = "a string"
	case 't', 'f':
		got = "a boolean"
	case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		got = "a number"
	}
	if err := s.skip(1); err != nil {
		return err
	}
	if *typeErr == nil {
		*typeErr = &jsonTypeError{field: fieldNames[f], want: want, got: got}
	}
	return nil
}

// key reads an object key and the colon after it.
func (s *msgScanner) key() (raw []byte, escaped bool, err error) {
	if s.i == len(s.data) {
		return nil, false, s.fail("unexpected end of JSON input")
	}
	if s.data[s.i] != '"' {
		return nil, false, s.fail("invalid character " + quoteByte(s.data[s.i]) + " looking for beginning of object key string")
	}
	raw, plain, err := s.string()
	if err != nil {
		return nil, false, err
	}
	s.space()
	if s.i == len(s.data) {
		return nil, false, s.fail("unexpected end of JSON input")
	}
	if s.data[s.i] != ':' {
		return nil, false, s.fail("invalid character " + quoteByte(s.data[s.i]) + " after object key")
	}
	s.i++
	// Invalid UTF-8 in a key cannot match a field name, so only escapes
	// need decoding.
	return raw, !plain && hasBackslash(raw), nil
}

func hasBackslash(b []byte) bool {
	for _, c := range b {
		if c == '\\' {
			return true
		}
	}
	return false
}
