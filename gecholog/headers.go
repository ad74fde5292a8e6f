package gecholog

import "encoding/binary"

// Headers as gecholog sends them (inbound_headers, ingress_headers): Go's
// http.Header as encoding/json writes it, an object of header names to
// lists of strings, compact. Parse steps over them in every message that
// carries them, and for a request to a pool with affinity the handler
// wants one header among them, so headers walks that shape in one tight
// pass, checking it as skip would and finding the named header on the
// way. Anything else (an escape, a control character, a value that is
// not a list of strings, a syntax error) it hands back whole to skip,
// which reads every JSON value and says what is wrong with it.

// headerFind is the header headers looks for, and what it found there:
// the first value of the first header named name in any case of ASCII
// letters, as headerValue finds it.
type headerFind struct {
	name    string     // "" looks for nothing
	value   []byte     // the header's first value; nil when not found or malformed
	problem KeyProblem // KeyMalformed: the first value is not a plain string
	found   bool
}

// rawHeaders is raw for a value that should be headers: it reads them
// with headers when they are in gecholog's shape (fast reports it, and f
// holds what it found), else with skip (f then holds nothing).
func (s *scanner) rawHeaders(depth int, p *[]byte, f *headerFind) (fast bool, err error) {
	start := s.i
	if s.headers(f) {
		*p = s.data[start:s.i]
		return true, nil
	}
	s.i = start
	if f != nil {
		*f = headerFind{name: f.name}
	}
	return false, s.raw(depth, p)
}

// headers steps over the headers object at s.i and reports whether it is
// in gecholog's shape: an object of names to lists of strings, none with
// an escape or a control character (but the first value of f's header,
// which may hold escapes), with any JSON white space between. Such an
// object is valid JSON and ends where skip would end it. When headers
// reports false, s.i and f are left anywhere.
func (s *scanner) headers(f *headerFind) bool {
	d := s.data
	i := s.i
	if i == len(d) || d[i] != '{' {
		return false
	}
	i = spaceAt(d, i+1)
	if i < len(d) && d[i] == '}' {
		s.i = i + 1
		return true
	}
	if i == len(d) || d[i] != '"' {
		return false
	}
	i++
	// Between the strings, encoding/json writes `":["` after a name,
	// `","` between two values, `"],"` between two headers and `"]}` at
	// the end, which one load and compare each recognise; anything else
	// is read a byte at a time.
	for {
		// i is at the text of a header's name.
		end, ok := plainEnd(d, i)
		if !ok {
			return false
		}
		// The header sought: its first value must be a plain string, as
		// firstPlain reads it.
		sought := f != nil && !f.found && end-i == len(f.name) && f.name != "" &&
			(string(d[i:end]) == f.name || headerEqual(d[i:end], f.name)) // gecholog sends names in Go's canonical case
		if sought {
			f.found, f.problem = true, KeyMalformed
		}
		if end+4 <= len(d) && binary.LittleEndian.Uint32(d[end:]) == nameThenValue {
			i = end + 3
		} else {
			i = spaceAt(d, end+1)
			if i == len(d) || d[i] != ':' {
				return false
			}
			i = spaceAt(d, i+1)
			if i == len(d) || d[i] != '[' {
				return false
			}
			if i = spaceAt(d, i+1); i < len(d) && d[i] == ']' {
				// No values.
				if i, ok = s.nextHeader(i + 1); !ok || i < 0 {
					return ok
				}
				continue
			}
		}
	values:
		for {
			// i is at a value's quote.
			if i == len(d) || d[i] != '"' {
				return false
			}
			if sought {
				sought = false
				s.i = i
				raw, plain, err := s.string()
				if err != nil {
					return false
				}
				if plain {
					f.value, f.problem = raw, KeyOK
				}
				end = s.i - 1
			} else if end, ok = plainEnd(d, i+1); !ok {
				return false
			}
			if end+4 <= len(d) {
				switch w := binary.LittleEndian.Uint32(d[end:]); {
				case w == valueThenHeader:
					i = end + 4
					break values
				case w&0xffffff == lastValue:
					s.i = end + 3
					return true
				case w&0xffffff == valueThenValue:
					i = end + 2
					continue
				}
			}
			i = spaceAt(d, end+1)
			if i == len(d) {
				return false
			}
			if d[i] == ']' {
				if i, ok = s.nextHeader(i + 1); !ok || i < 0 {
					return ok
				}
				break
			}
			if d[i] != ',' {
				return false
			}
			i = spaceAt(d, i+1)
		}
	}
}

// What encoding/json writes between a header's strings, read little
// endian.
const (
	nameThenValue   = '"' | ':'<<8 | '['<<16 | '"'<<24 // `":["`
	valueThenValue  = '"' | ','<<8 | '"'<<16           // `","`
	valueThenHeader = '"' | ']'<<8 | ','<<16 | '"'<<24 // `"],"`
	lastValue       = '"' | ']'<<8 | '}'<<16           // `"]}`
)

// nextHeader reads what follows a header's list, from i: the end of the
// object, after which it sets s.i and returns -1, or a comma and the next
// name's quote, returning the index of the name's text. ok is false on
// anything else.
func (s *scanner) nextHeader(i int) (next int, ok bool) {
	d := s.data
	i = spaceAt(d, i)
	if i == len(d) {
		return 0, false
	}
	if d[i] == '}' {
		s.i = i + 1
		return -1, true
	}
	if d[i] != ',' {
		return 0, false
	}
	if i = spaceAt(d, i+1); i == len(d) || d[i] != '"' {
		return 0, false
	}
	return i + 1, true
}

// spaceAt is the index of the first byte at or after i in d that is not
// JSON white space.
func spaceAt(d []byte, i int) int {
	for i < len(d) && (d[i] == ' ' || d[i] == '\t' || d[i] == '\n' || d[i] == '\r') {
		i++
	}
	return i
}
