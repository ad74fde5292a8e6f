// Package safetext makes text that came over the wire safe to show, on a
// terminal or on the status page: router names, reasons and names of
// writers come from the bucket, where anyone with NATS access can write,
// and a terminal obeys control characters (an ESC or a C1 CSI, U+009B,
// moves the cursor and recolours), while bidirectional overrides
// (U+202E) and zero-width characters make one text read as another.
// Such characters are shown escaped, as \u202e, rather than dropped, so
// that what is there can be seen and told apart.
package safetext

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// MaxShown is how many characters of one field from the bucket (a reason,
// a router name, who wrote it) status and the status page show; the rest
// is cut off and replaced by a marker that says how much was left out. A
// reason the broker writes is under 60 characters.
const MaxShown = 200

// Line returns s on one line, every character that could spoof a terminal
// or a page shown escaped: C0 and C1 controls and DEL (tab, newline and
// carriage return become spaces), bidirectional marks, overrides and
// isolates (U+061C, U+200E, U+200F, U+202A to U+202E, U+2066 to U+2069),
// zero-width and other format characters (Unicode's Cf), the line and
// paragraph separators, and bytes that are not UTF-8 (as \x9b).
func Line(s string) string { return clip(s, -1) }

// Clip is Line cut after max characters of its result, a marker such as
// "… [5000 more bytes]" in place of the rest: an escape is never cut in
// two.
func Clip(s string, max int) string { return clip(s, max) }

// Unsafe reports whether Line would change s other than by turning tabs
// and line breaks into spaces.
func Unsafe(s string) bool {
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if (r == utf8.RuneError && n == 1) || (hidden(r) && r != '\t' && r != '\n' && r != '\r') {
			return true
		}
		i += n
	}
	return false
}

func clip(s string, max int) string {
	if max < 0 && !needs(s) {
		return s
	}
	var b strings.Builder
	shown := 0
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		var piece string
		switch {
		case r == utf8.RuneError && n == 1:
			piece = fmt.Sprintf(`\x%02x`, s[i])
		case r == '\t' || r == '\n' || r == '\r':
			piece = " "
		case hidden(r) && r > 0xffff:
			piece = fmt.Sprintf(`\U%08x`, r)
		case hidden(r):
			piece = fmt.Sprintf(`\u%04x`, r)
		default:
			piece = s[i : i+n]
		}
		width := 1
		if len(piece) > 1 && piece[0] == '\\' {
			width = len(piece)
		}
		if max >= 0 && shown+width > max {
			fmt.Fprintf(&b, "… [%d more bytes]", len(s)-i)
			return b.String()
		}
		b.WriteString(piece)
		shown += width
		i += n
	}
	return b.String()
}

// needs reports whether s has anything Line changes; most text has not,
// and is returned as it is.
func needs(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' || c >= 0x7f {
			return true
		}
	}
	return false
}

// hidden reports whether r acts on the display instead of showing: a
// control character, a format character (bidirectional controls,
// zero-width spaces and joiners, the byte order mark, soft hyphen, tags)
// or a line or paragraph separator.
func hidden(r rune) bool {
	return unicode.IsControl(r) || unicode.In(r, unicode.Cf, unicode.Zl, unicode.Zp)
}

// Cut is s cut after max characters, escaping nothing, with the marker
// Clip puts in place of the rest: for text that stays data, as in JSON.
func Cut(s string, max int) string {
	shown := 0
	for i := range s {
		if shown == max {
			return s[:i] + fmt.Sprintf("… [%d more bytes]", len(s)-i)
		}
		shown++
	}
	return s
}

// JSON rewrites the characters Line escapes inside a JSON document's
// strings as JSON escapes (\u202e), which decode to the same text: the
// document means the same to a script and spoofs no terminal it is
// printed on. encoding/json escapes C0 controls and U+2028 and U+2029
// itself, and turns bytes that are not UTF-8 into U+FFFD; the rest, C1
// controls and format characters, it writes as they are.
func JSON(doc []byte) []byte {
	var out []byte
	for i := 0; i < len(doc); {
		r, n := utf8.DecodeRune(doc[i:])
		if (r < utf8.RuneSelf && r != 0x7f) || !hidden(r) {
			if out != nil {
				out = append(out, doc[i:i+n]...)
			}
			i += n
			continue
		}
		if out == nil {
			out = append(make([]byte, 0, len(doc)+32), doc[:i]...)
		}
		if r > 0xffff {
			hi, lo := utf16.EncodeRune(r)
			out = fmt.Appendf(out, `\u%04x\u%04x`, hi, lo)
		} else {
			out = fmt.Appendf(out, `\u%04x`, r)
		}
		i += n
	}
	if out == nil {
		return doc
	}
	return out
}
