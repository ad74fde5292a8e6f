package broker

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// message is what gecholog sends: the router in gl_path and, in the
// response context only, the status the client got.
type message struct {
	path      []byte // gl_path, decoded; it may share data's memory
	hasPath   bool
	status    int // egress_status_code
	hasStatus bool
	// headers is inbound_headers exactly as sent, undecoded: only a 429
	// or 503 needs it, for Retry-After. nil when absent.
	headers []byte
}

var errNoPath = errors.New(`no "gl_path" string in the message; give the broker's processor entries "gl_path" in input_fields_include`)

// parse reads gecholog's processor message. It is the broker's hot path,
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
func parse(data []byte) (message, error) {
	var m message
	if err := scanMessage(data, &m); err != nil {
		return m, fmt.Errorf("message is not a JSON object with a string gl_path and a number egress_status_code: %w", err)
	}
	if !m.hasPath {
		return m, errNoPath
	}
	if m.hasStatus && (m.status < 100 || m.status > 599) {
		return m, fmt.Errorf("egress_status_code %d is not an HTTP status", m.status)
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
func scanMessage(data []byte, m *message) error {
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
func (s *msgScanner) value(m *message, f msgField, typeErr *error) error {
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
			m.path, m.hasPath = nil, false
		case fieldStatus:
			m.status, m.hasStatus = 0, false
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
			m.path, m.hasPath = raw, true
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
			m.status, m.hasStatus = n, true
			return nil
		}
		return s.wrongType(f, "a number", typeErr)
	case fieldHeaders:
		start := s.i
		if err := s.skip(1); err != nil {
			return err
		}
		m.headers = s.data[start:s.i]
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

// Failure reports whether a status the client got means the router is down,
// overloaded or misconfigured: 5xx, 429, 408, 401, 403 and 404. Other codes,
// including 400, 413 and 422, are the client's own doing.
func Failure(status int) bool {
	switch status {
	case 401, 403, 404, 408, 429:
		return true
	}
	return status >= 500 && status <= 599
}

// reply is the request-context answer that sends a call to router. Pools
// hold only gecholog router paths (letters, digits and /), which need no
// escaping; anything else goes through encoding/json.
func reply(router string) []byte {
	for i := 0; i < len(router); i++ {
		if c := router[i]; c < ' ' || c >= utf8.RuneSelf || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			b, _ := json.Marshal(map[string]string{"gl_path": router}) // a map of strings always encodes
			return b
		}
	}
	b := make([]byte, 0, len(`{"gl_path":""}`)+len(router))
	b = append(b, `{"gl_path":"`...)
	b = append(b, router...)
	return append(b, `"}`...)
}

// retryAfter reads the upstream's Retry-After from gecholog's
// inbound_headers (header name to a list of values, names in any case):
// delay-seconds or an HTTP date. It returns 0 when there is none or it
// cannot be read, and at least a nanosecond for a date already past, which
// the policy then raises to its one-second floor. Only a 429 or 503 gets
// here, so encoding/json's cost does not matter.
func retryAfter(headers []byte, now time.Time) time.Duration {
	if len(headers) == 0 {
		return 0
	}
	var h map[string][]string
	if json.Unmarshal(headers, &h) != nil {
		return 0
	}
	for name, values := range h {
		if !strings.EqualFold(name, "Retry-After") || len(values) == 0 {
			continue
		}
		v := strings.TrimSpace(values[0])
		if secs, err := strconv.ParseInt(v, 10, 64); err == nil && secs >= 0 {
			return max(time.Duration(min(secs, 1<<32))*time.Second, 1)
		}
		if t, err := http.ParseTime(v); err == nil {
			return max(t.Sub(now), 1)
		}
		return 0
	}
	return 0
}
