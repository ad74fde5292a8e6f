package gecholog

import (
	"fmt"
	"time"
	"unicode"
	"unicode/utf8"
)

// The field readers both documents share: each reads one value into a
// field of the caller's struct, or records the first value of the wrong
// type (as encoding/json would name it) and steps over it; and matching a
// key to the field names the caller reads, as encoding/json matches them.

// jsonTypeError is JSON that is valid but holds the wrong type for a field.
type jsonTypeError struct{ field, want, got string }

func (e *jsonTypeError) Error() string {
	return "cannot read " + e.got + " into " + e.field + ", which is " + e.want
}

// pick returns the index in names of the field key names, or -1. key is
// the key's raw text; escaped says it holds a backslash escape. names are
// lower-case ASCII letters and underscores, matched as encoding/json
// matches a struct's fields: exactly, or else case-insensitively with
// Unicode folding (gecholog always sends its keys in lower case, but
// "GL_PATH" is taken as encoding/json would take it rather than be the
// odd one out).
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

// nested reads an object whose members member reads. null is reset, as
// encoding/json sets a nil pointer; an object given again is read over
// what the first gave, as encoding/json decodes into the pointer it
// already has.
func (s *scanner) nested(depth int, field string, reset func(), member func(key []byte, escaped bool) error) error {
	switch s.data[s.i] {
	case 'n':
		if err := s.literal("null"); err != nil {
			return err
		}
		reset()
		return nil
	case '{':
		return s.object(member)
	}
	return s.mistyped(depth, field, "an object")
}

// str reads a string into *p, decoded; it shares data's memory unless it
// holds an escape or invalid UTF-8.
func (s *scanner) str(depth int, field string, p *[]byte, has *bool) error {
	switch s.data[s.i] {
	case 'n':
		if err := s.literal("null"); err != nil {
			return err
		}
		*p, *has = nil, false
		return nil
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
	return s.mistyped(depth, field, "a string")
}

// whole reads a number that encoding/json puts in an int into *n.
func (s *scanner) whole(depth int, field string, n *int, has *bool) error {
	c := s.data[s.i]
	switch {
	case c == 'n':
		if err := s.literal("null"); err != nil {
			return err
		}
		*n, *has = 0, false
		return nil
	case c == '-' || '0' <= c && c <= '9':
		v, whole, err := s.number()
		if err != nil {
			return err
		}
		if !whole {
			if s.typeErr == nil {
				s.typeErr = &jsonTypeError{field: field, want: "a whole number", got: "a number with a fraction or exponent, or too large"}
			}
			return nil
		}
		*n, *has = v, true
		return nil
	}
	return s.mistyped(depth, field, "a number")
}

// raw reads any value into *p exactly as sent, undecoded, like
// json.RawMessage, which keeps null as null.
func (s *scanner) raw(depth int, p *[]byte) error {
	start := s.i
	if err := s.skip(depth); err != nil {
		return err
	}
	*p = s.data[start:s.i]
	return nil
}

// timestamp reads a time as encoding/json reads a *time.Time: null is
// absent, and anything else is handed to time.Time's UnmarshalJSON as it
// stands, quotes and all, which takes an RFC 3339 string without escapes.
func (s *scanner) timestamp(depth int, field string, t *time.Time) error {
	var raw []byte
	if err := s.raw(depth, &raw); err != nil {
		return err
	}
	if raw[0] == 'n' {
		*t = time.Time{}
		return nil
	}
	var v time.Time
	if err := v.UnmarshalJSON(raw); err != nil {
		if s.typeErr == nil {
			s.typeErr = fmt.Errorf("%s: %w", field, err)
		}
		return nil
	}
	*t = v // 0001-01-01T00:00:00Z reads as absent: no upstream answered then
	return nil
}

// mistyped skips a value of the wrong type for field, which wants a
// value described by want, and records the first such error.
func (s *scanner) mistyped(depth int, field, want string) error {
	got := "another JSON value"
	if !s.vague {
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
		default:
			got = "a JSON value"
		}
	}
	if err := s.skip(depth); err != nil {
		return err
	}
	if s.typeErr == nil {
		s.typeErr = &jsonTypeError{field: field, want: want, got: got}
	}
	return nil
}
