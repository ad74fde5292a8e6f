package gecholog

import (
	"math"
	"strconv"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// string reads a string starting at its opening quote and returns its raw
// text between the quotes. plain reports that the text needs no decoding:
// no escapes, and valid UTF-8.
func (s *msgScanner) string() (raw []byte, plain bool, err error) {
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
func (s *msgScanner) number() (n int, whole bool, err error) {
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

func (s *msgScanner) numberEnd(where string) error {
	if s.i == len(s.data) {
		return s.fail("unexpected end of JSON input")
	}
	return s.fail("invalid character " + quoteByte(s.data[s.i]) + " " + where)
}

// literal reads true, false or null.
func (s *msgScanner) literal(word string) error {
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
func (s *msgScanner) skip(depth int) error {
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
func (s *msgScanner) space() {
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
func (s *msgScanner) end() error {
	s.space()
	if s.i < len(s.data) {
		return s.fail("invalid character " + quoteByte(s.data[s.i]) + " after top-level value")
	}
	return nil
}

func (s *msgScanner) fail(msg string) error { return &jsonSyntaxError{msg: msg, off: s.i} }

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
