package gecholog

import (
	"encoding/binary"
	"math/bits"
	"strconv"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// JSON strings as the scanner reads them: in place, without allocating
// for a string with no escapes, and unquoted as encoding/json does.

// string reads a string starting at its opening quote and returns its raw
// text between the quotes. plain reports that the text needs no decoding:
// no escapes, and valid UTF-8.
func (s *scanner) string() (raw []byte, plain bool, err error) {
	start := s.i + 1
	plain = true
	for i := start; i < len(s.data); {
		// Eight bytes at a time while none of them needs a look: most of
		// a message is plain ASCII text (paths, header names and values).
		for i+8 <= len(s.data) {
			special := specialBytes(binary.LittleEndian.Uint64(s.data[i:]))
			if special != 0 {
				i += bits.TrailingZeros64(special) / 8
				break
			}
			i += 8
		}
		if i == len(s.data) {
			break
		}
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

const (
	ones  = 0x0101010101010101
	highs = 0x8080808080808080
)

// specialBytes marks, in the high bit of each byte of the little-endian
// word w, the bytes of a string's text that string must look at: a
// quote, a backslash, a control character (< 0x20) or a byte of a
// multi-byte UTF-8 sequence (>= 0x80). A word without a special byte has
// no mark, and the lowest mark is always on the first special byte (a
// mark may also stand on a plain byte above it, where a borrow carried).
func specialBytes(w uint64) uint64 { return w&highs | stopBytes(w) }

// stopBytes is specialBytes without the bytes >= 0x80: the bytes of a
// string's text that end it, escape or make it invalid JSON. A borrow
// starts only at a marked byte, so the lowest mark is the first of them.
func stopBytes(w uint64) uint64 {
	// A quote xor 0x02 is 0x20, and a control character xor 0x02 another
	// control character, so the bytes of w^0x02 below 0x21 are both.
	ctl := w ^ (0x02 * ones)
	backslash := w ^ ('\\' * ones)
	return ((ctl-0x21*ones)&^ctl | (backslash-ones)&^backslash) & highs
}

// plainEnd returns the index in d of the quote that ends a string whose
// text starts at i, when the text holds neither an escape nor a control
// character; ok is false when it does, or has no end. Bytes >= 0x80 are
// text to it: JSON's syntax allows any (encoding/json reads invalid
// UTF-8 as U+FFFD).
func plainEnd(d []byte, i int) (end int, ok bool) {
	if i > len(d) {
		return len(d), false
	}
	for rest := d[i:]; len(rest) >= 8; rest = rest[8:] {
		if stop := stopBytes(binary.LittleEndian.Uint64(rest)); stop != 0 {
			end = len(d) - len(rest) + bits.TrailingZeros64(stop)/8
			return end, d[end] == '"'
		}
	}
	for i = max(i, len(d)-7); i < len(d); i++ {
		if c := d[i]; c == '"' {
			return i, true
		} else if c == '\\' || c < ' ' {
			return i, false
		}
	}
	return i, false
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

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
