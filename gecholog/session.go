package gecholog

import (
	"encoding/binary"
	"math/bits"
	"sync/atomic"

	"github.com/gecholog/broker/broker"
)

// A pool with affinity keys each call by a header the client sent, which
// gecholog hands the request processor in ingress_headers when its
// input_fields_include names that field: an object of every client
// header (the API key among them) to its list of values. The broker reads
// only the header the pool names, and only during the call: it never logs,
// keeps or publishes that object or any other header's value.

// DefaultSessionHeader is gecholog's session header in its seed
// configuration (session_id_header in gl_config.json).
const DefaultSessionHeader = "Session-Id"

// KeyProblem is why a call's header gave no session key.
type KeyProblem int

// The problems with a call's header, for SessionKey.
const (
	KeyOK        KeyProblem = iota // a key, or no header at all (the first call of a conversation)
	KeyEmpty                       // the header's value is empty
	KeyLong                        // the value is longer than broker.MaxSessionKey
	KeyMalformed                   // not a list of plain strings, or not a gecholog session id
)

// SessionKey returns the key of a call's session from ingress_headers
// (headers, as sent): the first value of the header named name, matched
// in any case. With session, the value is a gecholog session id,
// GATEWAYID_UNIXNANO_COUNT_TRANSACTION, and the key its first three
// parts; otherwise the whole value, without the white space around it.
// The key shares headers' memory and is a part of the named header's
// value, never of another. A header left out is no key and no problem;
// headers that are not an object are malformed. It does not allocate: a
// value with JSON escapes is malformed, which no session id and no
// conversation id a client makes has.
func SessionKey(headers []byte, name string, session bool) (key []byte, problem KeyProblem) {
	v, problem := headerValue(headers, name)
	return keyOf(v, problem, session)
}

// keyOf is SessionKey of the header's first value v, as headerValue
// returns it with its problem.
func keyOf(v []byte, problem KeyProblem, session bool) (key []byte, _ KeyProblem) {
	if problem != KeyOK || v == nil {
		return nil, problem
	}
	v = trim(v)
	switch {
	case len(v) == 0:
		return nil, KeyEmpty
	case len(v) > broker.MaxSessionKey:
		return nil, KeyLong
	case !session:
		return v, KeyOK
	}
	if end := sessionEnd(v); end >= 0 {
		return v[:end], KeyOK
	}
	return nil, KeyMalformed
}

// sessionEnd returns where the session ends in the session id v,
// GATEWAYID_UNIXNANO_COUNT_TRANSACTION: the index of its third '_', when
// v has four parts and none is empty; -1 when it has not. It finds the
// underscores 8 bytes at a time (a byte at a time cost the hot path a
// tenth of its time; four IndexByte calls, a twentieth).
func sessionEnd(v []byte) int {
	var at [3]int
	n := 0
	mark := func(i int) bool { // false: a fourth '_'
		if n == 3 {
			return false
		}
		at[n] = i
		n++
		return true
	}
	i := 0
	for ; i+8 <= len(v); i += 8 {
		x := binary.LittleEndian.Uint64(v[i:]) ^ ('_' * ones)
		// The bytes of x that are zero, exactly: no borrow across bytes.
		const low7 = 0x7f7f7f7f7f7f7f7f
		for m := ^((x&low7 + low7) | x | low7); m != 0; m &= m - 1 {
			if !mark(i + bits.TrailingZeros64(m)/8) {
				return -1
			}
		}
	}
	for ; i < len(v); i++ {
		if v[i] == '_' && !mark(i) {
			return -1
		}
	}
	if n < 3 || at[0] == 0 || at[1] == at[0]+1 || at[2] == at[1]+1 || at[2] == len(v)-1 {
		return -1 // fewer than four parts, or an empty one
	}
	return at[2]
}

// headerValue is the first value of the header name in headers, an
// object of header names to lists of strings; nil when the header is
// not there. Other headers' values are stepped over, never read.
func headerValue(headers []byte, name string) ([]byte, KeyProblem) {
	s := scanner{data: headers}
	s.space()
	if s.i == len(s.data) {
		return nil, KeyOK
	}
	if s.data[s.i] != '{' {
		if s.data[s.i] == 'n' { // null: no headers
			return nil, KeyOK
		}
		return nil, KeyMalformed
	}
	for more := s.open(); more; {
		key, escaped, err := s.key()
		if err != nil {
			return nil, KeyMalformed
		}
		if !escaped && headerEqual(key, name) {
			return firstPlain(&s)
		}
		if err := s.skip(1); err != nil {
			return nil, KeyMalformed
		}
		if more, err = s.more(); err != nil {
			return nil, KeyMalformed
		}
	}
	return nil, KeyOK
}

// firstPlain reads the list of values at s.i and returns its first, which
// must be a string without escapes.
func firstPlain(s *scanner) ([]byte, KeyProblem) {
	if s.i == len(s.data) || s.data[s.i] != '[' {
		return nil, KeyMalformed
	}
	s.i++
	s.space()
	if s.i == len(s.data) || s.data[s.i] != '"' {
		return nil, KeyMalformed // an empty list, or not a string
	}
	raw, plain, err := s.string()
	if err != nil || !plain {
		return nil, KeyMalformed
	}
	return raw, KeyOK
}

// headerEqual reports whether key is name in any case of ASCII letters.
func headerEqual(key []byte, name string) bool {
	if len(key) != len(name) {
		return false
	}
	for i := range len(key) {
		a, b := key[i], name[i]
		if 'A' <= a && a <= 'Z' {
			a += 'a' - 'A'
		}
		if 'A' <= b && b <= 'Z' {
			b += 'a' - 'A'
		}
		if a != b {
			return false
		}
	}
	return true
}

// keyProblems counts the calls whose header gave no key, by problem.
type keyProblems [4]atomic.Uint64
