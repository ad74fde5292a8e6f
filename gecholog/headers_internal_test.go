package gecholog

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"math/bits"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
)

// firstMark is the index of the lowest byte marked in a mask of
// specialBytes or stopBytes, 8 for none.
func firstMark(mask uint64) int { return bits.TrailingZeros64(mask) / 8 }

// firstOf is the index of the first byte of w for which special holds, 8
// for none.
func firstOf(w uint64, special func(c byte) bool) int {
	for k := range 8 {
		if special(byte(w >> (8 * k))) {
			return k
		}
	}
	return 8
}

func isStop(c byte) bool    { return c == '"' || c == '\\' || c < ' ' }
func isSpecial(c byte) bool { return isStop(c) || c >= 0x80 }

// TestWordMasksFindTheFirstSpecialByte holds the eight-bytes-at-a-time
// scan to the byte-at-a-time one: every byte value at every place of a
// word, after plain text and before another special byte (whose borrow
// may mark plain bytes above the first), and words of random bytes.
func TestWordMasksFindTheFirstSpecialByte(t *testing.T) {
	check := func(w uint64) {
		t.Helper()
		if got, want := firstMark(specialBytes(w)), firstOf(w, isSpecial); got != want {
			t.Fatalf("%#016x: specialBytes marks byte %d first, want %d", w, got, want)
		}
		if got, want := firstMark(stopBytes(w)), firstOf(w, isStop); got != want {
			t.Fatalf("%#016x: stopBytes marks byte %d first, want %d", w, got, want)
		}
	}
	for at := range 8 {
		for c := range 256 {
			for _, after := range []byte{'a', 0, '"', '\\', 0x1f, 0x20, 0x21, 0x22, 0x23, 0x5b, 0x5c, 0x5d, 0x7f, 0x80, 0xff} {
				b := []byte("abcdefgh")
				b[at] = byte(c)
				for k := at + 1; k < 8; k++ {
					b[k] = after
				}
				check(binary.LittleEndian.Uint64(b))
			}
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	alphabet := []byte{0, 1, 0x1f, ' ', '!', '"', '#', '\\', ']', 'a', 0x7f, 0x80, 0xc3, 0xff}
	for range 1_000_000 {
		var b [8]byte
		for k := range b {
			if r.IntN(3) == 0 {
				b[k] = alphabet[r.IntN(len(alphabet))]
			} else {
				b[k] = byte(r.IntN(256))
			}
		}
		check(binary.LittleEndian.Uint64(b[:]))
	}
}

// FuzzHeadersReadAsSkipDoes holds the headers reader to skip and to
// headerValue: when it reads a value, skip reads the same text, which
// encoding/json takes as JSON, and it finds the named header's first
// value as headerValue does in that text.
//
//	go test -run '^$' -fuzz '^FuzzHeadersReadAsSkipDoes$' -fuzztime 20s ./gecholog
func FuzzHeadersReadAsSkipDoes(f *testing.F) {
	for _, seed := range []string{
		`{}`, `{ }`, `{"a":[]}`, `{"a":[ ]}`,
		`{"Accept":["application/json"],"Api-Key":["secret"],"Session-Id":["AAA00001_1696681410696216000_3_0"],"User-Agent":["OpenAI/Python 1.54.0"]}`,
		`{"Session-Id":["A_B_C_D","E_F_G_H"],"session-id":["X_Y_Z_W"]}`,
		`{"session-ID":[]}`, `{"Session-Id":[""]}`, `{"Session-Id":["A\u005fB_C_D"]}`, `{"Session-Id":["\u00e9"]}`,
		"{\"Session-Id\":[\"\xff\xfe\"]}", "{\"Session-Id\":[\"a\x01\"]}", "{\"X\":[\"a\x01\"]}",
		`{"Session\u002dId":["A_B_C_D"]}`, `{"S":["a\"b"]}`, `{"S":["a\\"]}`,
		` {"a" : [ "b" , "c" ] , "d":["e"] } `, "{\n\t\"a\":\r[\"b\"]}",
		`{"a":["b"]`, `{"a":["b"`, `{"a":["b`, `{"a":[`, `{"a":`, `{"a"`, `{"a`, `{`,
		`{"a":["b"],}`, `{"a":["b",]}`, `{"a":"b"}`, `{"a":[1]}`, `{"a":[["b"]]}`, `{"a":[{}]}`, `{"a":null}`,
		`{"a":["b"]]`, `{"a":["b"]}}`, `{"a":["b"]},"c":1}`, `{"a",["b"]}`, `{"a":["b"] "c":["d"]}`,
		`null`, `[]`, `"x"`, `1`,
		`{"` + strings.Repeat("a", 40) + `":["` + strings.Repeat("é", 20) + `"]}`,
	} {
		f.Add([]byte(seed), "Session-Id")
	}
	f.Fuzz(func(t *testing.T, data []byte, name string) {
		var find headerFind
		find.name = name
		fast := scanner{data: data}
		if !fast.headers(&find) {
			return
		}
		slow := scanner{data: data}
		if err := slow.skip(1); err != nil {
			t.Fatalf("%q: headers read it, skip says %v", data, err)
		}
		if fast.i != slow.i {
			t.Fatalf("%q: headers read %d bytes, skip %d", data, fast.i, slow.i)
		}
		text := data[:fast.i]
		if !json.Valid(text) {
			t.Fatalf("%q: headers read %q, which encoding/json refuses", data, text)
		}
		value, problem := headerValue(text, name)
		if name == "" {
			value, problem = nil, KeyOK // "" looks for nothing
		}
		if !bytes.Equal(find.value, value) || (find.value == nil) != (value == nil) || find.problem != problem {
			t.Fatalf("%q, %q: headers found %q (problem %d), headerValue %q (problem %d)", text, name, find.value, find.problem, value, problem)
		}
	})
}

// FuzzOnePassKeyIsSessionKey holds the handler's one pass over a request
// to Parse and SessionKey: whatever the order of the message's members,
// whether gecholog's headers or others, it keys the call as SessionKey
// keys the ingress_headers Parse returns.
//
//	go test -run '^$' -fuzz '^FuzzOnePassKeyIsSessionKey$' -fuzztime 20s ./gecholog
func FuzzOnePassKeyIsSessionKey(f *testing.F) {
	for _, seed := range []string{
		`{"Api-Key":["secret"],"Session-Id":["AAA00001_1696681410696216000_3_0"],"X-Conversation-Id":[" c-42 "]}`,
		`{"session-id":["A_B_C_D"],"x-conversation-id":[""]}`,
		`{"Session-Id":["A_B_C"]}`, `{"Session-Id":[]}`, `{"Session-Id":["A\u005fB_C_D"]}`,
		`{"Session-Id" : [ "A_B_C_D" ] }`, `{"Session-Id":"A_B_C_D"}`, `null`, `{}`,
		`{"X-Conversation-Id":["` + strings.Repeat("x", 300) + `"]}`,
	} {
		for layout := range uint8(6) {
			f.Add([]byte(seed), layout)
		}
	}
	pools := []broker.Pool{
		{Ingress: "/s/", Affinity: broker.Affinity{Session: true}, Routers: []broker.Router{{Path: "/s/a/", Weight: 1}}},
		{Ingress: "/h/", Affinity: broker.Affinity{Header: "X-Conversation-Id"}, Routers: []broker.Router{{Path: "/h/a/", Weight: 1}}},
		{Ingress: "/n/", Routers: []broker.Router{{Path: "/n/a/", Weight: 1}}},
	}
	b, err := broker.New(broker.Config{Pools: pools, Policy: broker.Policy{DisabledTime: time.Hour}, ID: "fuzz"})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { b.Close(context.Background()) })
	h := NewHandler(b, nil)
	f.Fuzz(func(t *testing.T, headers []byte, layout uint8) {
		for _, path := range []string{"/s/", "/h/", "/n/"} {
			var msg string
			hs := string(headers)
			switch layout % 6 {
			case 0: // as gecholog sends it
				msg = `{"gl_path":"` + path + `","ingress_headers":` + hs + `}`
			case 1: // gl_path after the headers
				msg = `{"ingress_headers":` + hs + `,"gl_path":"` + path + `"}`
			case 2: // another gl_path after the headers
				msg = `{"gl_path":"/s/","ingress_headers":` + hs + `,"gl_path":"` + path + `"}`
			case 3: // the headers twice
				msg = `{"gl_path":"` + path + `","ingress_headers":{"Session-Id":["Q_R_S_T"]},"ingress_headers":` + hs + `}`
			case 4: // white space and another key's case
				msg = ` { "GL_PATH" : "` + path + `" , "ingress_headers" : ` + hs + ` } `
			case 5: // a response context
				msg = `{"egress_status_code":200,"gl_path":"` + path + `","ingress_headers":` + hs + `}`
			}
			k := keyScan{h: h}
			m, err := parse([]byte(msg), &k)
			if err != nil {
				continue
			}
			got, gotProblem := k.key(&m)
			a := b.AffinityOf(m.Path)
			var want []byte
			wantProblem := KeyOK
			if a.On() {
				want, wantProblem = SessionKey(m.IngressHeaders, h.keyHeader(a), a.Session)
			}
			if !bytes.Equal(got, want) || gotProblem != wantProblem {
				t.Fatalf("%q: key %q (problem %d), SessionKey %q (problem %d)", msg, got, gotProblem, want, wantProblem)
			}
		}
	})
}

// sessionOfLoop is how SessionKey split a session id before it used
// bytes.IndexByte: a byte at a time.
func sessionOfLoop(v []byte) ([]byte, KeyProblem) {
	parts, start, end := 0, 0, 0
	for i := 0; i <= len(v); i++ {
		if i < len(v) && v[i] != '_' {
			continue
		}
		if i == start {
			return nil, KeyMalformed
		}
		parts++
		if parts == 3 {
			end = i
		}
		start = i + 1
	}
	if parts != 4 {
		return nil, KeyMalformed
	}
	return v[:end], KeyOK
}

// FuzzSessionIDSplitsAsBefore holds the session id's split to the byte
// at a time one it replaced.
func FuzzSessionIDSplitsAsBefore(f *testing.F) {
	for _, seed := range []string{"A_B_C_D", "AAA00001_1696681410696216000_3_0", "A_B_C", "A_B_C_D_E", "_B_C_D", "A__C_D", "A_B_C_", "A_B__D", "____", "x"} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, v []byte) {
		v = trim(v)
		if len(v) == 0 || len(v) > broker.MaxSessionKey {
			return
		}
		got, gotProblem := keyOf(v, KeyOK, true)
		want, wantProblem := sessionOfLoop(v)
		if !bytes.Equal(got, want) || gotProblem != wantProblem {
			t.Fatalf("%q: key %q (problem %d), the loop's %q (problem %d)", v, got, gotProblem, want, wantProblem)
		}
	})
}

// TestHeadersInGechologsShapeAreReadInOnePass holds the handler to its
// fast path on what gecholog sends, with the key found on the way.
func TestHeadersInGechologsShapeAreReadInOnePass(t *testing.T) {
	is := is.New(t)
	pool := broker.Pool{Ingress: "/s/", Affinity: broker.Affinity{Session: true}, Routers: []broker.Router{{Path: "/s/a/", Weight: 1}}}
	b, err := broker.New(broker.Config{Pools: []broker.Pool{pool}, Policy: broker.Policy{DisabledTime: time.Hour}, ID: "test"})
	is.NoErr(err)
	t.Cleanup(func() { b.Close(context.Background()) })
	k := keyScan{h: NewHandler(b, nil)}
	m, err := parse([]byte(`{"gl_path":"/s/","ingress_headers":{"Api-Key":["secret"],"Session-Id":["AAA00001_1696681410696216000_3_0"]}}`), &k)
	is.NoErr(err)
	is.True(k.valid)                                                   // read on the way, not again
	is.Equal(string(k.find.value), "AAA00001_1696681410696216000_3_0") // the header's value
	key, problem := k.key(&m)
	is.Equal(string(key), "AAA00001_1696681410696216000_3") // the session
	is.Equal(problem, KeyOK)
}

// TestSessionEndSplitsAsTheLoopForEveryPlaceOfItsUnderscores compares the
// word-at-a-time split with the byte-at-a-time one over 200,000 ids of 1
// to 40 bytes, whose underscores stand anywhere in a word or its tail,
// beside the bytes one bit from '_' ('^', '`', '_'|0x80, 'O').
func TestSessionEndSplitsAsTheLoopForEveryPlaceOfItsUnderscores(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	alphabet := []byte{'_', '_', 'A', '1', '^', '`', 0xdf, 'O'}
	for range 200_000 {
		v := make([]byte, 1+rng.IntN(40))
		for i := range v {
			v[i] = alphabet[rng.IntN(len(alphabet))]
		}
		got, gotProblem := keyOf(v, KeyOK, true)
		want, wantProblem := sessionOfLoop(v)
		if !bytes.Equal(got, want) || gotProblem != wantProblem {
			t.Fatalf("%q: key %q (problem %d), the loop's %q (problem %d)", v, got, gotProblem, want, wantProblem)
		}
	}
}
