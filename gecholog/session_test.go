package gecholog_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/gecholog"
)

func TestSessionKeyReadsOnlyTheNamedHeader(t *testing.T) {
	const id = "AAA00001_1696681410696216000_3_0"
	long := strings.Repeat("x", 10<<10)
	for _, tc := range []struct {
		name, headers, header string
		session               bool
		key                   string
		problem               gecholog.KeyProblem
	}{
		{"session id", `{"Api-Key":["sk-secret"],"Session-Id":["` + id + `"]}`, "Session-Id", true, "AAA00001_1696681410696216000_3", gecholog.KeyOK},
		{"any case", `{"session-ID":["` + id + `"]}`, "Session-Id", true, "AAA00001_1696681410696216000_3", gecholog.KeyOK},
		{"first of many values", `{"Session-Id":["` + id + `","BBB00002_1_1_1"]}`, "Session-Id", true, "AAA00001_1696681410696216000_3", gecholog.KeyOK},
		{"missing", `{"Api-Key":["sk-secret"]}`, "Session-Id", true, "", gecholog.KeyOK},
		{"no headers", ``, "Session-Id", true, "", gecholog.KeyOK},
		{"null headers", `null`, "Session-Id", true, "", gecholog.KeyOK},
		{"empty", `{"Session-Id":[""]}`, "Session-Id", true, "", gecholog.KeyEmpty},
		{"blank", `{"Session-Id":["  "]}`, "Session-Id", true, "", gecholog.KeyEmpty},
		{"three parts", `{"Session-Id":["AAA00001_1696681410696216000_3"]}`, "Session-Id", true, "", gecholog.KeyMalformed},
		{"five parts", `{"Session-Id":["A_B_C_D_E"]}`, "Session-Id", true, "", gecholog.KeyMalformed},
		{"an empty part", `{"Session-Id":["A__C_D"]}`, "Session-Id", true, "", gecholog.KeyMalformed},
		{"not a list", `{"Session-Id":"` + id + `"}`, "Session-Id", true, "", gecholog.KeyMalformed},
		{"empty list", `{"Session-Id":[]}`, "Session-Id", true, "", gecholog.KeyMalformed},
		{"a number", `{"Session-Id":[5]}`, "Session-Id", true, "", gecholog.KeyMalformed},
		{"escaped", `{"Session-Id":["A\u005fB_C_D"]}`, "Session-Id", true, "", gecholog.KeyMalformed},
		{"headers not an object", `["Session-Id"]`, "Session-Id", true, "", gecholog.KeyMalformed},
		{"10 KB", `{"Session-Id":["` + long + `"]}`, "Session-Id", true, "", gecholog.KeyLong},
		{"10 KB conversation", `{"X-Conversation-Id":["` + long + `"]}`, "X-Conversation-Id", false, "", gecholog.KeyLong},
		{"conversation", `{"Authorization":["Bearer sk"],"x-conversation-id":[" c-42 "]}`, "X-Conversation-Id", false, "c-42", gecholog.KeyOK},
		{"a header whose name contains the name", `{"X-Session-Id":["` + id + `"]}`, "Session-Id", true, "", gecholog.KeyOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			is := is.New(t)
			key, problem := gecholog.SessionKey([]byte(tc.headers), tc.header, tc.session)
			is.Equal(string(key), tc.key) // the session's key
			is.Equal(problem, tc.problem) // and what was wrong
		})
	}
}

// namedValues are the values of every header named name in any case, as
// encoding/json reads headers; ok is false when it cannot read them.
func namedValues(headers []byte, name string) (values []string, ok bool) {
	var h map[string]json.RawMessage
	if json.Unmarshal(headers, &h) != nil {
		return nil, false
	}
	for k, v := range h {
		if strings.EqualFold(k, name) {
			values = append(values, string(v))
		}
	}
	return values, true
}

// FuzzSessionKeyIsPartOfTheNamedHeader holds SessionKey to reading the
// named header only: a key is always a part of that header's value as
// sent, so no other header's value (the client's API key) can become one.
func FuzzSessionKeyIsPartOfTheNamedHeader(f *testing.F) {
	f.Add([]byte(`{"Api-Key":["AAA00001_1_2_3"],"Session-Id":["AAA00001_1696681410696216000_3_0"]}`))
	f.Add([]byte(`{"Api-Key":["AAA00001_1_2_3"]}`))
	f.Add([]byte(`{"session-id":["x"],"Session-Id":["A_B_C_D"]}`))
	f.Add([]byte(`{"Session-Id":["A_B_C_D"],"Api-Key":[`))
	f.Fuzz(func(t *testing.T, headers []byte) {
		for _, session := range []bool{true, false} {
			key, _ := gecholog.SessionKey(headers, "Session-Id", session)
			if key == nil {
				continue
			}
			if len(key) > broker.MaxSessionKey {
				t.Fatalf("%q: key of %d bytes", headers, len(key))
			}
			// The raw text of the named header, in whichever case it came.
			found := false
			for off := 0; ; {
				i := bytes.Index(asciiLower(headers[off:]), []byte(`"session-id"`))
				if i < 0 {
					break
				}
				rest := headers[off+i+len(`"session-id"`):]
				// Its first value: a plain string, from the quote after the
				// name to the next (or to the end of a truncated text).
				if open := bytes.IndexByte(rest, '"'); open >= 0 {
					v := rest[open+1:]
					if end := bytes.IndexByte(v, '"'); end >= 0 {
						v = v[:end]
					}
					if bytes.Contains(v, key) {
						found = true
					}
				}
				off += i + 1
			}
			if !found {
				t.Fatalf("%q: key %q is not part of the Session-Id header's value", headers, key)
			}
			if vs, ok := namedValues(headers, "Session-Id"); ok && !slices.ContainsFunc(vs, func(v string) bool { return strings.Contains(v, string(key)) }) {
				t.Fatalf("%q: key %q is not part of %q, the header as encoding/json reads it", headers, key, vs)
			}
		}
	})
}

func TestHandlerKeysCallsBySessionAndCountsBadHeaders(t *testing.T) {
	is := is.New(t)
	pool := broker.Pool{Ingress: "/s/", Affinity: broker.Affinity{Session: true}}
	for _, r := range []string{"/s/a/", "/s/b/", "/s/c/", "/s/d/"} {
		pool.Routers = append(pool.Routers, broker.Router{Path: r, Weight: 1})
	}
	h := handlerFor(t, []broker.Pool{pool}, gecholog.SessionHeader("X-Gl-Session"))
	msg := func(headers string) []byte {
		return []byte(`{"gl_path":"/s/","ingress_headers":` + headers + `}`)
	}
	// call sends a request context and reports the call a success, so
	// that no router fills up with calls in flight.
	call := func(headers string) string {
		reply := h.Handle(msg(headers))
		var r struct {
			GLPath string `json:"gl_path"`
		}
		is.NoErr(json.Unmarshal(reply, &r))
		h.Handle([]byte(`{"gl_path":"` + r.GLPath + `","egress_status_code":200}`))
		return r.GLPath
	}
	// Every transaction of one session goes to one router.
	for s := range 50 {
		first := call(`{"X-Gl-Session":["AAA00001_` + strings.Repeat("1", s+1) + `_3_0"]}`)
		for tr := 1; tr < 5; tr++ {
			got := call(`{"Api-Key":["k` + string(rune('a'+tr)) + `"],"x-gl-session":["AAA00001_` + strings.Repeat("1", s+1) + `_3_` + string(rune('0'+tr)) + `"]}`)
			is.Equal(got, first) // the session's router, whatever its transaction and other headers
		}
	}
	h.Handle(msg(`{"X-Gl-Session":[""]}`))
	h.Handle(msg(`{"X-Gl-Session":["` + strings.Repeat("1", 10<<10) + `"]}`))
	h.Handle(msg(`{"X-Gl-Session":["no-session"]}`))
	h.Handle(msg(`{"Session-Id":["AAA00001_1_3_0"]}`)) // not the header this gecholog names
	is.Equal(h.KeyProblems(), [4]uint64{0, 1, 1, 1})   // empty, long and malformed each counted
}

// handlerFor is the message handler of a replica in local mode serving
// pools.
func handlerFor(t *testing.T, pools []broker.Pool, opts ...gecholog.HandlerOption) *gecholog.Handler {
	t.Helper()
	b, err := broker.New(broker.Config{Pools: pools, Policy: broker.Policy{DisabledTime: time.Hour}, ID: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close(context.Background()) })
	return gecholog.NewHandler(b, nil, opts...)
}

// asciiLower is b with ASCII letters in lower case, byte for byte.
func asciiLower(b []byte) []byte {
	out := bytes.Clone(b)
	for i, c := range out {
		if 'A' <= c && c <= 'Z' {
			out[i] = c + 'a' - 'A'
		}
	}
	return out
}

// TestHugeIngressHeadersAreReadInBoundedTime holds a request context to
// one linear pass over its headers whatever their size: a megabyte of
// headers (the session header last, or none), a megabyte-long header
// before it, and a 10 KB session header; in gecholog's shape, with white
// space, and with an escaped name first (which the one pass hands to the
// generic scanner, and the key to a second pass).
// Each takes about a millisecond; the bound is a thousand times that, so
// a busy machine passes, and a pass that went back over the headers for
// each header (quadratic: 30,000 headers) does not.
func TestHugeIngressHeadersAreReadInBoundedTime(t *testing.T) {
	const id = "AAA00001_1696681410696216000_3_0"
	var many strings.Builder
	many.WriteString("{")
	for i := 0; many.Len() < 1<<20; i++ {
		fmt.Fprintf(&many, `"X-Header-%d":["value %d"],`, i, i)
	}
	manyHeaders := many.String()
	bigValue := `"X-Big":["` + strings.Repeat("v", 1<<20) + `"],`
	for _, tc := range []struct {
		name, headers string
		problems      [4]uint64
	}{
		{"a megabyte of headers", manyHeaders + `"Session-Id":["` + id + `"]}`, [4]uint64{}},
		{"a megabyte of headers without the session's", manyHeaders + `"Other":["x"]}`, [4]uint64{}},
		{"a megabyte of headers with white space", strings.ReplaceAll(manyHeaders, ",", ", ") + `"Session-Id": ["` + id + `"]}`, [4]uint64{}},
		{"a megabyte of headers after an escaped name", `{"X\u002dA":["x"],` + manyHeaders[1:] + `"Session-Id":["` + id + `"]}`, [4]uint64{}},
		{"a megabyte-long header", "{" + bigValue + `"Session-Id":["` + id + `"]}`, [4]uint64{}},
		{"a 10 KB session header", manyHeaders + `"Session-Id":["` + strings.Repeat("1", 10<<10) + `"]}`, [4]uint64{0, 0, 1, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			is := is.New(t)
			pool := broker.Pool{Ingress: "/s/", Affinity: broker.Affinity{Session: true}, Routers: []broker.Router{{Path: "/s/a/", Weight: 1}, {Path: "/s/b/", Weight: 1}}}
			h := handlerFor(t, []broker.Pool{pool})
			msg := []byte(`{"gl_path":"/s/","ingress_headers":` + tc.headers + `}`)
			start := time.Now()
			reply := h.Handle(msg)
			took := time.Since(start)
			is.True(len(reply) > 0)                // a router chosen
			is.Equal(h.Malformed(), uint64(0))     // the message read
			is.Equal(h.KeyProblems(), tc.problems) // the key read, or its problem counted
			if took > time.Second {
				t.Fatalf("%d bytes of headers took %v, want well under a second", len(tc.headers), took)
			}
		})
	}
}
