package gecholog

import "fmt"

// MaxSessionHeader is the longest session header name the broker takes,
// in bytes: the handler compares it with every header gecholog sends, so
// its length bounds that work.
const MaxSessionHeader = 256

// CheckSessionHeader says why name cannot be gecholog's session header
// (session_id_header in gl_config.json), or nil: a header name is an HTTP
// token (RFC 9110: letters, digits and !#$%&'*+-.^_`|~) of 1 to
// MaxSessionHeader bytes. Such a name never needs a JSON escape, so the
// handler finds it among ingress_headers as written.
func CheckSessionHeader(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty: give gecholog's session_id_header, such as %s", DefaultSessionHeader)
	case len(name) > MaxSessionHeader:
		return fmt.Errorf("%d bytes: a header name is at most %d", len(name), MaxSessionHeader)
	}
	for i := range len(name) {
		if !tokenByte(name[i]) {
			return fmt.Errorf("byte %d (%q) is not allowed in a header name: use only letters, digits and !#$%%&'*+-.^_`|~, as gecholog's session_id_header (such as %s)", i+1, name[i], DefaultSessionHeader)
		}
	}
	return nil
}

// tokenByte reports whether c may be in an HTTP token.
func tokenByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	switch c {
	case '!', '#', '$', '%', '&', '\'', '*', '+', '-', '.', '^', '_', '`', '|', '~':
		return true
	}
	return false
}
