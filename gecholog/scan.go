package gecholog

import (
	"fmt"
	"math"
	"strconv"
	"time"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// The scanner Parse, ParseTransaction and RateLimits share: they read
// gecholog's JSON in one pass, without allocating, and accept and reject
// exactly what encoding/json does, with its errors' words.

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

// scanner walks a JSON text. Its methods leave i on the first byte they
// did not consume.
type scanner struct {
	data []byte
	i    int
	// typeErr is the first value of the wrong type for its field. As
	// encoding/json does, the scan goes on to check the syntax of the
	// whole text, and reports it only then.
	typeErr error
	// vague makes a type error say "another JSON value" instead of naming
	// what came: ParseTransaction's errors have always said so, Parse's
	// name it.
	vague bool
}

// document reads data as one JSON object, surrounded by white space at
// most, whose members member reads; name is what a type error calls it.
func (s *scanner) document(name string, member func(key []byte, escaped bool) error) error {
	if object, err := s.top(name); !object {
		return err
	}
	if err := s.object(member); err != nil {
		return err
	}
	return s.finish()
}

// top starts reading data as one JSON object: object is true with s.i at
// its '{'. Otherwise the whole document has been read, and err is what to
// say of it.
func (s *scanner) top(name string) (object bool, err error) {
	s.space()
	if s.i == len(s.data) {
		return false, s.fail("unexpected end of JSON input")
	}
	switch s.data[s.i] {
	case '{':
		return true, nil
	case 'n': // encoding/json takes null as an object without members
		if err := s.literal("null"); err != nil {
			return false, err
		}
		return false, s.end()
	}
	if err := s.skip(0); err != nil {
		return false, err
	}
	if err := s.end(); err != nil {
		return false, err
	}
	return false, &jsonTypeError{field: name, want: "an object", got: "another JSON value"}
}

// finish ends the document whose object top started: nothing but white
// space may follow, and then the first type error is the document's.
func (s *scanner) finish() error {
	if err := s.end(); err != nil {
		return err
	}
	return s.typeErr
}

// object reads the members of the object whose '{' is at s.i, handing
// each key to member with s.i at its value, which member must read.
func (s *scanner) object(member func(key []byte, escaped bool) error) error {
	for more := s.open(); more; {
		key, escaped, err := s.key()
		if err != nil {
			return err
		}
		if err := member(key, escaped); err != nil {
			return err
		}
		if more, err = s.more(); err != nil {
			return err
		}
	}
	return nil
}

// open steps into the object whose '{' is at s.i, and reports whether it
// has members: if not, it steps past its '}'.
func (s *scanner) open() bool {
	s.i++
	s.space()
	if s.i < len(s.data) && s.data[s.i] == '}' {
		s.i++
		return false
	}
	return true
}

// more reads what follows an object's member: a comma and white space
// before the next, or the end of the object, which it steps past.
func (s *scanner) more() (bool, error) {
	s.space()
	if s.i == len(s.data) {
		return false, s.fail("unexpected end of JSON input")
	}
	switch c := s.data[s.i]; c {
	case ',':
		s.i++
		s.space()
		return true, nil
	case '}':
		s.i++
		return false, nil
	default:
		return false, s.fail("invalid character " + quoteByte(c) + " after object key:value pair")
	}
}

// key reads an object key, the colon after it and the white space before
// the member's value.
func (s *scanner) key() (raw []byte, escaped bool, err error) {
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
	s.space()
	if s.i == len(s.data) {
		return nil, false, s.fail("unexpected end of JSON input")
	}
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

// The readers of a field's value below start at its first byte, inside
// depth objects and arrays, and read it as encoding/json reads it into a
// field of a struct: null is the same as leaving a pointer field out, and
// a value of the wrong type is skipped and recorded in typeErr. A field
// is set only by a value read whole: Parse returns what it read with its
// error.

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

// The syntax: each reader checks one JSON value as encoding/json's
// scanner does and fails with its words and offset.

// string reads a string starting at its opening quote and returns its raw
// text between the quotes. plain reports that the text needs no decoding:
// no escapes, and valid UTF-8.
func (s *scanner) string() (raw []byte, plain bool, err error) {
	start := s.i + 1
	plain = true
	for i := start; i < len(s.data); {
		c := s.data[i]
		switch {
		case c == '"':
			s.i = i + 1
			return s.data[start:i], plain, nil
		case c == '\\':
			plain = false
			if i+1 == len(s.data) {
				s.i = len(s.data)
				return nil, false, s.fail("unexpected end of JSON input")
			}
			switch s.data[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				for k := 2; k < 6; k++ {
					if i+k == len(s.data) {
						s.i = len(s.data)
						return nil, false, s.fail("unexpected end of JSON input")
					}
					if !isHex(s.data[i+k]) {
						s.i = i + k
						return nil, false, s.fail("invalid character " + quoteByte(s.data[i+k]) + " in \\u hexadecimal character escape")
					}
				}
				i += 6
			default:
				s.i = i + 1
				return nil, false, s.fail("invalid character " + quoteByte(s.data[i+1]) + " in string escape code")
			}
		case c < ' ':
			s.i = i
			return nil, false, s.fail("invalid character " + quoteByte(c) + " in string literal")
		case c < utf8.RuneSelf:
			i++
		default:
			r, n := utf8.DecodeRune(s.data[i:])
			if r == utf8.RuneError && n == 1 {
				plain = false // encoding/json turns it into U+FFFD
			}
			i += n
		}
	}
	s.i = len(s.data)
	return nil, false, s.fail("unexpected end of JSON input")
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// number reads a JSON number. whole reports whether it is what
// encoding/json puts in an int: written without fraction or exponent
// (502.0 and 5.02e2 are not), and within int64. n is its value then.
func (s *scanner) number() (n int, whole bool, err error) {
	d := s.data
	i := s.i
	neg := false
	if d[i] == '-' {
		neg = true
		i++
	}
	if i == len(d) {
		s.i = i
		return 0, false, s.fail("unexpected end of JSON input")
	}
	var u uint64
	digits := 0
	switch c := d[i]; {
	case c == '0':
		i++
		digits = 1
	case '1' <= c && c <= '9':
		for i < len(d) && '0' <= d[i] && d[i] <= '9' {
			if digits < 19 { // 19 digits always fit a uint64
				u = u*10 + uint64(d[i]-'0')
			}
			digits++
			i++
		}
	default:
		s.i = i
		return 0, false, s.fail("invalid character " + quoteByte(c) + " in numeric literal")
	}
	whole = digits <= 19 && (u <= math.MaxInt64 || neg && u == -math.MinInt64)
	if i < len(d) && d[i] == '.' {
		whole = false
		i++
		if i == len(d) || d[i] < '0' || d[i] > '9' {
			s.i = i
			return 0, false, s.numberEnd("after decimal point in numeric literal")
		}
		for i < len(d) && '0' <= d[i] && d[i] <= '9' {
			i++
		}
	}
	if i < len(d) && (d[i] == 'e' || d[i] == 'E') {
		whole = false
		i++
		if i < len(d) && (d[i] == '+' || d[i] == '-') {
			i++
		}
		if i == len(d) || d[i] < '0' || d[i] > '9' {
			s.i = i
			return 0, false, s.numberEnd("in exponent of numeric literal")
		}
		for i < len(d) && '0' <= d[i] && d[i] <= '9' {
			i++
		}
	}
	s.i = i
	if !whole {
		return 0, false, nil
	}
	n = int(u) // for -2^63, int(u) is already -2^63 and negates to itself
	if neg {
		n = -n
	}
	return n, true, nil
}

func (s *scanner) numberEnd(where string) error {
	if s.i == len(s.data) {
		return s.fail("unexpected end of JSON input")
	}
	return s.fail("invalid character " + quoteByte(s.data[s.i]) + " " + where)
}

// literal reads true, false or null.
func (s *scanner) literal(word string) error {
	for k := 0; k < len(word); k++ {
		if s.i == len(s.data) {
			return s.fail("unexpected end of JSON input")
		}
		if s.data[s.i] != word[k] {
			return s.fail("invalid character " + quoteByte(s.data[s.i]) + " in literal " + word + " (expecting " + quoteByte(word[k]) + ")")
		}
		s.i++
	}
	return nil
}

// skip reads one JSON value of any kind and checks its syntax; depth is
// the number of objects and arrays around it. It keeps its own stack of
// open containers, one bit each, rather than recursing, so a hostile
// message nested ten thousand deep costs a few hundred bytes.
func (s *scanner) skip(depth int) error {
	var small [4]uint64
	objects := small[:0] // bit set: the open container is an object
	open := 0
	push := func(object bool) error {
		if depth+open+1 > maxDepth {
			return s.fail("exceeded max depth")
		}
		if open%64 == 0 {
			objects = append(objects, 0)
		}
		if object {
			objects[open/64] |= 1 << (open % 64)
		} else {
			objects[open/64] &^= 1 << (open % 64)
		}
		open++
		return nil
	}
	inObject := func() bool { return objects[(open-1)/64]&(1<<((open-1)%64)) != 0 }

	for {
		// A value starts here.
		s.space()
		if s.i == len(s.data) {
			return s.fail("unexpected end of JSON input")
		}
		switch c := s.data[s.i]; {
		case c == '{':
			if err := push(true); err != nil {
				return err
			}
			s.i++
			s.space()
			if s.i < len(s.data) && s.data[s.i] == '}' {
				s.i++
				open--
				break
			}
			if _, _, err := s.key(); err != nil {
				return err
			}
			continue
		case c == '[':
			if err := push(false); err != nil {
				return err
			}
			s.i++
			s.space()
			if s.i < len(s.data) && s.data[s.i] == ']' {
				s.i++
				open--
				break
			}
			continue
		case c == '"':
			if _, _, err := s.string(); err != nil {
				return err
			}
		case c == 't':
			if err := s.literal("true"); err != nil {
				return err
			}
		case c == 'f':
			if err := s.literal("false"); err != nil {
				return err
			}
		case c == 'n':
			if err := s.literal("null"); err != nil {
				return err
			}
		case c == '-' || '0' <= c && c <= '9':
			if _, _, err := s.number(); err != nil {
				return err
			}
		default:
			return s.fail("invalid character " + quoteByte(c) + " looking for beginning of value")
		}
		// A value ended: close containers until one takes another value.
		for {
			if open == 0 {
				return nil
			}
			s.space()
			if s.i == len(s.data) {
				return s.fail("unexpected end of JSON input")
			}
			c := s.data[s.i]
			if inObject() {
				if c == '}' {
					s.i++
					open--
					continue
				}
				if c != ',' {
					return s.fail("invalid character " + quoteByte(c) + " after object key:value pair")
				}
				s.i++
				s.space()
				if _, _, err := s.key(); err != nil {
					return err
				}
				break
			}
			if c == ']' {
				s.i++
				open--
				continue
			}
			if c != ',' {
				return s.fail("invalid character " + quoteByte(c) + " after array element")
			}
			s.i++
			break
		}
	}
}

// space skips JSON white space.
func (s *scanner) space() {
	for s.i < len(s.data) {
		switch s.data[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// end checks that nothing but white space follows the message.
func (s *scanner) end() error {
	s.space()
	if s.i < len(s.data) {
		return s.fail("invalid character " + quoteByte(s.data[s.i]) + " after top-level value")
	}
	return nil
}

func (s *scanner) fail(msg string) error { return &jsonSyntaxError{msg: msg, off: s.i} }

func quoteByte(c byte) string {
	if c == '\'' {
		return `'\''`
	}
	if c == '"' {
		return `'"'`
	}
	return strconv.QuoteRune(rune(c))
}

// unquote decodes the raw text of a string whose syntax string checked,
// as encoding/json does: escapes, \u surrogate pairs, and U+FFFD for
// invalid UTF-8 and lone surrogates.
func unquote(raw []byte) []byte {
	b := make([]byte, 0, len(raw)+utf8.UTFMax)
	for i := 0; i < len(raw); {
		c := raw[i]
		switch {
		case c == '\\':
			switch raw[i+1] {
			case 'b':
				b = append(b, '\b')
			case 'f':
				b = append(b, '\f')
			case 'n':
				b = append(b, '\n')
			case 'r':
				b = append(b, '\r')
			case 't':
				b = append(b, '\t')
			case 'u':
				r := hex4(raw[i+2 : i+6])
				i += 6
				if utf16.IsSurrogate(r) {
					if i+6 <= len(raw) && raw[i] == '\\' && raw[i+1] == 'u' {
						if dec := utf16.DecodeRune(r, hex4(raw[i+2:i+6])); dec != unicode.ReplacementChar {
							b = utf8.AppendRune(b, dec)
							i += 6
							continue
						}
					}
					r = unicode.ReplacementChar
				}
				b = utf8.AppendRune(b, r)
				continue
			default: // " \ /
				b = append(b, raw[i+1])
			}
			i += 2
		case c < utf8.RuneSelf:
			b = append(b, c)
			i++
		default:
			r, n := utf8.DecodeRune(raw[i:])
			b = utf8.AppendRune(b, r)
			i += n
		}
	}
	return b
}

func hex4(h []byte) rune {
	var r rune
	for _, c := range h {
		switch {
		case c <= '9':
			c -= '0'
		case c <= 'F':
			c -= 'A' - 10
		default:
			c -= 'a' - 10
		}
		r = r<<4 | rune(c)
	}
	return r
}
