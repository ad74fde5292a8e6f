package gecholog

import (
	"math"
	"strconv"
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

// The readers of a field's value below start at its first byte, inside
// depth objects and arrays, and read it as encoding/json reads it into a
// field of a struct: null is the same as leaving a pointer field out, and
// a value of the wrong type is skipped and recorded in typeErr. A field
// is set only by a value read whole: Parse returns what it read with its
// error.

// The syntax: each reader checks one JSON value as encoding/json's
// scanner does and fails with its words and offset.

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
