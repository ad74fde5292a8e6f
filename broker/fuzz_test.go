package broker_test

// The fuzz targets live here, in ./broker, although what they fuzz first
// is gecholog's wire format: the README's test command fuzzes ./broker
// (FuzzHandle and FuzzParse), and the targets drive gecholog's messages
// into the decision core, the way a replica does. Go instruments every
// package of the test binary when fuzzing, so the gecholog package's
// scanner is covered from here.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/gecholog"
)

// FuzzHandle feeds the message handler anything at all. It must never
// panic, and must always answer: either empty, or a request-context answer
// naming one of the pool's routers.
//
//	go test -run '^$' -fuzz '^FuzzHandle$' -fuzztime 30s ./broker
func FuzzHandle(f *testing.F) {
	big := `{"gl_path":"/azure/","pad":"` + strings.Repeat("x", 1<<20) + `"}`
	for _, seed := range []string{
		`{"gl_path":"/azure/"}`,
		`{"gl_path":"/azure/dud/","egress_status_code":502}`,
		`{"gl_path":"/azure/gpt4/","egress_status_code":429,"inbound_headers":{"Retry-After":["30"]}}`,
		`{"gl_path":"/azure/gpt4/","egress_status_code":503,"inbound_headers":{"retry-after":["Wed, 21 Oct 2015 07:28:00 GMT"]}}`,
		`{"gl_path":"/azure/gpt4/","egress_status_code":503,"inbound_headers":{"Retry-After":[99999999999999999999]}}`,
		`{"gl_path":"/azure/dud/","egress_status_code":99999999999999999999999}`,
		`{"gl_path":"/azure/dud/","egress_status_code":-0}`,
		`{"gl_path":"/azure/dud/","egress_status_code":5e2}`,
		`{"gl_path":"/azure/dud/","egress_status_code":null}`,
		`{"gl_path":{"gl_path":{"gl_path":"/azure/"}}}`,
		`{"a":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],"gl_path":"/azure/"}`,
		`{"gl_path":"/äzure/"}`,
		`{"gl_path":"/azure/\u0000"}`,
		"{\"gl_path\":\"/azure/\xff\xfe\"}",
		`{"gl_path":"\/azure\/"}`,
		`{"gl_path":"/azure/","gl_path":"/azure/dud/"}`,
		`{"gl_path":42}`,
		`{"gl_path":["/azure/"]}`,
		`{"gl_path":true}`,
		`{"gl_path":"/azure/"} trailing`,
		`[{"gl_path":"/azure/"}]`,
		`"gl_path"`,
		`null`,
		``,
		`{`,
		big,
	} {
		f.Add([]byte(seed))
	}
	b, err := broker.New(broker.Config{
		Pools:  broker.DefaultPools(),
		Policy: broker.Policy{DisabledTime: time.Hour},
		ID:     "fuzz",
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { b.Close(context.Background()) })
	h := gecholog.NewHandler(b, slog.New(slog.DiscardHandler))
	valid := map[string]bool{"/azure/gpt35turbo/": true, "/azure/gpt4/": true, "/azure/dud/": true}
	f.Fuzz(func(t *testing.T, data []byte) {
		in := bytes.Clone(data)
		out := h.Handle(data)
		if !bytes.Equal(in, data) {
			t.Fatalf("Handle changed its input")
		}
		if len(out) == 0 {
			return
		}
		var m map[string]string
		if err := json.Unmarshal(out, &m); err != nil || len(m) != 1 || !valid[m["gl_path"]] {
			t.Fatalf("answer %q to %q is not one of the pool's routers", out, data)
		}
	})
}

// stdMessage is what gecholog.Parse's hand-written scanner stands in for:
// the message as encoding/json reads it.
type stdMessage struct {
	GLPath  *string         `json:"gl_path"`
	Status  *int            `json:"egress_status_code"`
	Headers json.RawMessage `json:"inbound_headers"`
	Ingress json.RawMessage `json:"ingress_headers"`
}

// agree fails t unless gecholog.Parse's scanner and json.Unmarshal both
// refuse data, or both accept it with the same values, and Parse and the
// encoding/json parse it replaced agree on accepting it. The scanner
// accepted when Parse gave no error, or one of gecholog's own rules (no
// gl_path, a status no HTTP answer has) rather than ErrMalformed.
func agree(t *testing.T, data []byte) {
	t.Helper()
	var std stdMessage
	stdErr := json.Unmarshal(data, &std)
	m, err := gecholog.Parse(data)
	scanned := err == nil || !errors.Is(err, gecholog.ErrMalformed)
	if scanned != (stdErr == nil) {
		t.Fatalf("%.200q: scanner says %v, encoding/json says %v", data, err, stdErr)
	}
	if scanned {
		if m.HasPath != (std.GLPath != nil) || m.HasPath && string(m.Path) != *std.GLPath {
			t.Fatalf("%.200q: gl_path %v %q, encoding/json %v", data, m.HasPath, m.Path, show(std.GLPath))
		}
		if m.HasStatus != (std.Status != nil) || m.HasStatus && m.Status != *std.Status {
			t.Fatalf("%.200q: egress_status_code %v %d, encoding/json %v", data, m.HasStatus, m.Status, show(std.Status))
		}
		if (m.Headers == nil) != (std.Headers == nil) || !bytes.Equal(m.Headers, std.Headers) {
			t.Fatalf("%.200q: inbound_headers %.100q, encoding/json %.100q", data, m.Headers, std.Headers)
		}
		if (m.IngressHeaders == nil) != (std.Ingress == nil) || !bytes.Equal(m.IngressHeaders, std.Ingress) {
			t.Fatalf("%.200q: ingress_headers %.100q, encoding/json %.100q", data, m.IngressHeaders, std.Ingress)
		}
	}

	stdErr = parseStd(data)
	if (err == nil) != (stdErr == nil) {
		t.Fatalf("%.200q: Parse says %v, the encoding/json parse says %v", data, err, stdErr)
	}
}

func show[T any](p *T) string {
	if p == nil {
		return "absent"
	}
	return fmt.Sprintf("%#v", *p)
}

// parseStd is the encoding/json parse that gecholog.Parse replaced.
func parseStd(data []byte) error {
	var m stdMessage
	if err := json.Unmarshal(data, &m); err != nil {
		return err
	}
	if m.GLPath == nil {
		return gecholog.ErrNoPath
	}
	if m.Status != nil && (*m.Status < 100 || *m.Status > 599) {
		return fmt.Errorf("egress_status_code %d is not an HTTP status", *m.Status)
	}
	return nil
}

// parseCorpus is the edge cases of gecholog's message and of JSON, and
// the seed corpus of FuzzParse.
func parseCorpus() []string {
	c := []string{
		// What gecholog sends.
		`{"gl_path":"/azure/"}`,
		`{"gl_path":"/azure/dud/","egress_status_code":502}`,
		`{"egress_status_code":200,"gl_path":"/azure/gpt4/","inbound_headers":{"Content-Type":["application/json"]}}`,
		`{"gl_path":"/azure/dud/","egress_status_code":429,"inbound_headers":{"Retry-After":["30"]}}`,
		`{"gl_path":"/azure/","inbound_status_code":200}`,
		// White space.
		" \t\r\n{ \"gl_path\" \n: \"/azure/\" ,\t\"egress_status_code\"\r: 200 } \n",
		"{\"gl_path\":\"/azure/\"}\v",
		"\u00a0{\"gl_path\":\"/azure/\"}",
		"\xef\xbb\xbf{\"gl_path\":\"/azure/\"}", // a byte-order mark is not JSON
		// Escapes in gl_path.
		`{"gl_path":"\/azure\/"}`,
		`{"gl_path":"\u002fazure\u002F"}`,
		`{"gl_path":"/a\"b\\c\b\f\n\r\t/"}`,
		`{"gl_path":"\u0000"}`,
		`{"gl_path":"\ud83d\ude00"}`,
		`{"gl_path":"\ud83d"}`,
		`{"gl_path":"\ude00\ud83d"}`,
		`{"gl_path":"\ud83dx"}`,
		`{"gl_path":"\ud83d\u0041"}`,
		`{"gl_path":"\ud83d\ud83d\ude00"}`,
		`{"gl_path":"\ud83d\"}`,
		`{"gl_path":"\q"}`,
		`{"gl_path":"\'"}`,
		`{"gl_path":"\u12G4"}`,
		`{"gl_path":"\u12"}`,
		`{"gl_path":"\`,
		`{"gl_path":"\u`,
		`{"gl_path":"\u12`,
		// Unicode and invalid UTF-8.
		`{"gl_path":"/é/日本/"}`,
		"{\"gl_path\":\"/a\xff/\"}",
		"{\"gl_path\":\"\xc3\x28\"}",
		"{\"gl_path\":\"\xe6\x97\"}",
		"{\"gl_path\":\"\xed\xa0\x80\"}", // an encoded surrogate
		"{\"gl_path\":\"\\n\xff\"}",
		"{\"x\":\"\xff\",\"gl_path\":\"/a/\"}",
		"{\"\xff\":1,\"gl_path\":\"/a/\"}",
		"{\"gl_path\":\"/a/\"\xff}",
		// Control characters in strings.
		"{\"gl_path\":\"/a\n/\"}",
		"{\"gl_path\":\"/a\t/\"}",
		"{\"gl_path\":\"/a\x00/\"}",
		"{\"gl_path\":\"/a\x7f/\"}",
		// Present, absent, null, twice.
		`{"gl_path":""}`,
		`{}`,
		`{"gl_path":null}`,
		`{"gl_path":"/a/","gl_path":"/b/"}`,
		`{"gl_path":"/a/","gl_path":null}`,
		`{"gl_path":null,"gl_path":"/b/"}`,
		`{"gl_path":"/a/","gl_path":5}`,
		`{"gl_path":5,"gl_path":"/a/"}`,
		`{"gl_path":"/a/","egress_status_code":502,"egress_status_code":null}`,
		`{"gl_path":"/a/","egress_status_code":null,"egress_status_code":503}`,
		`{"gl_path":"/a/","inbound_headers":{"a":["1"]},"inbound_headers":{"b":["2"]}}`,
		`{"gl_path":"/a/","inbound_headers":null}`,
		`{"gl_path":"/azure/","ingress_headers":{"Session-Id":["AAA00001_1696681410696216000_3_0"],"Api-Key":["secret"]}}`,
		`{"gl_path":"/a/","ingress_headers":{"a":["1"]},"INGRESS_HEADERS":null}`,
		`{"gl_path":"/a/","ingress_headers":"x"}`,
		`{"gl_path":"/a/","inbound_headers": "text" }`,
		`{"gl_path":"/a/","inbound_headers":[1,{"a":[]},"x"]}`,
		`{"gl_path":"/a/","inbound_headers":  {"Retry-After" : [ "30" ] }  }`,
		`{"gl_path":"/a/","inbound_headers":-1.5e3}`,
		`{"gl_path":"/a/","inbound_headers":true}`,
		`{"gl_path":"/a/","inbound_headers":}`,
		// Keys as encoding/json matches them.
		`{"GL_PATH":"/azure/"}`,
		`{"Gl_Path":"/azure/"}`,
		`{"gl_path":"/a/","GL_PATH":"/b/"}`,
		`{"gl\u005fpath":"/azure/"}`,
		`{"gl_p\u0061th":"/azure/","egress_status_code":502}`,
		`{"egre\u017f\u017f_status_code":502,"gl_path":"/a/"}`,
		"{\"EGRE\u017f\u017f_STATUS_CODE\":502,\"gl_path\":\"/a/\"}",
		`{"inbound_header\u017f":{"a":[]},"gl_path":"/a/"}`,
		`{"gl_path ":"/azure/"}`,
		`{"gl_pat":"/azure/"}`,
		`{"gl_pathx":"/azure/"}`,
		`{"":1,"gl_path":"/a/"}`,
		`{"gl_path":"/a/","":null}`,
		"{\"gl_path\\u0000\":\"/a/\"}",
		`{"gl_path\ud83d":"/a/"}`,
		// egress_status_code as a number.
		`{"gl_path":"/a/","egress_status_code":0}`,
		`{"gl_path":"/a/","egress_status_code":-0}`,
		`{"gl_path":"/a/","egress_status_code":99}`,
		`{"gl_path":"/a/","egress_status_code":100}`,
		`{"gl_path":"/a/","egress_status_code":599}`,
		`{"gl_path":"/a/","egress_status_code":600}`,
		`{"gl_path":"/a/","egress_status_code":-502}`,
		`{"gl_path":"/a/","egress_status_code":5020}`,
		`{"gl_path":"/a/","egress_status_code":502.0}`,
		`{"gl_path":"/a/","egress_status_code":502.5}`,
		`{"gl_path":"/a/","egress_status_code":5.02e2}`,
		`{"gl_path":"/a/","egress_status_code":5e2}`,
		`{"gl_path":"/a/","egress_status_code":502e0}`,
		`{"gl_path":"/a/","egress_status_code":502E+0}`,
		`{"gl_path":"/a/","egress_status_code":1e400}`,
		`{"gl_path":"/a/","egress_status_code":9223372036854775807}`,
		`{"gl_path":"/a/","egress_status_code":9223372036854775808}`,
		`{"gl_path":"/a/","egress_status_code":-9223372036854775808}`,
		`{"gl_path":"/a/","egress_status_code":-9223372036854775809}`,
		`{"gl_path":"/a/","egress_status_code":18446744073709551616}`,
		`{"gl_path":"/a/","egress_status_code":00000000000000000000502}`,
		`{"gl_path":"/a/","egress_status_code":00502}`,
		`{"gl_path":"/a/","egress_status_code":+502}`,
		`{"gl_path":"/a/","egress_status_code":.5}`,
		`{"gl_path":"/a/","egress_status_code":502.}`,
		`{"gl_path":"/a/","egress_status_code":502e}`,
		`{"gl_path":"/a/","egress_status_code":502e+}`,
		`{"gl_path":"/a/","egress_status_code":0x1F6}`,
		`{"gl_path":"/a/","egress_status_code":5_02}`,
		`{"gl_path":"/a/","egress_status_code":-}`,
		`{"gl_path":"/a/","egress_status_code":--502}`,
		`{"gl_path":"/a/","egress_status_code":502`,
		`{"gl_path":"/a/","egress_status_code":NaN}`,
		`{"gl_path":"/a/","egress_status_code":Infinity}`,
		// Fields of the wrong type.
		`{"gl_path":"/a/","egress_status_code":"502"}`,
		`{"gl_path":"/a/","egress_status_code":true}`,
		`{"gl_path":"/a/","egress_status_code":{}}`,
		`{"gl_path":"/a/","egress_status_code":[502]}`,
		`{"gl_path":42}`,
		`{"gl_path":true}`,
		`{"gl_path":false}`,
		`{"gl_path":{"p":"/azure/dud/"}}`,
		`{"gl_path":["/azure/"]}`,
		`{"gl_path":{"p":"/azure/dud/"},"egress_status_code":"x"}`,
		`{"gl_path":5,"x":tru}`,
		// Other keys, skipped but checked.
		`{"x":{"a":[1,2,{"b":null}],"c":"\u00e9"},"gl_path":"/a/","y":[[[]]],"z":true,"w":false,"v":-1.5e-3}`,
		`{"x":[],"y":{},"z":[{}],"gl_path":"/a/"}`,
		`{"x":"\q","gl_path":"/a/"}`,
		`{"x":[1,],"gl_path":"/a/"}`,
		`{"x":[,1],"gl_path":"/a/"}`,
		`{"x":[1 2],"gl_path":"/a/"}`,
		`{"x":{"a"},"gl_path":"/a/"}`,
		`{"x":{"a":1,},"gl_path":"/a/"}`,
		`{"x":{"a":1 "b":2},"gl_path":"/a/"}`,
		`{"x":{1:2},"gl_path":"/a/"}`,
		`{"x":{"a":1]},"gl_path":"/a/"}`,
		`{"x":[1},"gl_path":"/a/"}`,
		`{"x":tru,"gl_path":"/a/"}`,
		`{"x":nul,"gl_path":"/a/"}`,
		`{"x":nulll,"gl_path":"/a/"}`,
		`{"x":True,"gl_path":"/a/"}`,
		`{"x":1.,"gl_path":"/a/"}`,
		`{"x":01,"gl_path":"/a/"}`,
		`{"x":-01,"gl_path":"/a/"}`,
		`{"x":1e5,"gl_path":"/a/"}`,
		`{"x":-0.0e-0,"gl_path":"/a/"}`,
		`{"x":1E+2,"gl_path":"/a/"}`,
		`{"x":'a',"gl_path":"/a/"}`,
		`{"x":[`,
		`{"x":{`,
		`{"x":{"a":`,
		`{"x":[1,`,
		`{"x":[{"a":[{"b":[]}]}],"gl_path":"/a/"}`,
		// Broken objects.
		``,
		` `,
		`{`,
		`}`,
		`{"gl_path"}`,
		`{"gl_path":}`,
		`{"gl_path":"/a/",}`,
		`{,"gl_path":"/a/"}`,
		`{"gl_path":"/a/"}}`,
		`{"gl_path":"/a/"} x`,
		`{"gl_path":"/a/"}{}`,
		`{"gl_path":"/a/"}null`,
		`{gl_path:"/a/"}`,
		`{'gl_path':'/a/'}`,
		`{"gl_path":"/a/"`,
		`{"gl_path":"/a/`,
		`{"gl_path" "/a/"}`,
		`{"gl_path":"/a/" "x":1}`,
		`{"gl_path":"/a/";"x":1}`,
		`{"gl_path"::"/a/"}`,
		`{"gl_path":"/a/"` + "\x00",
		"{\"gl_path\":\"/a/\"}\x00",
		// Not an object.
		`null`,
		` null `,
		`null x`,
		`nul`,
		`nullnull`,
		`[]`,
		`["/azure/"]`,
		`[`,
		`"gl_path"`,
		`1`,
		`-1.5`,
		`true`,
		`false`,
		`hello`,
		`"unterminated`,
	}
	// Nesting at and beyond encoding/json's limit of 10000.
	for _, depth := range []int{9999, 10000} {
		c = append(c,
			`{"x":`+strings.Repeat("[", depth)+strings.Repeat("]", depth)+`,"gl_path":"/a/"}`,
			`{"x":`+strings.Repeat(`{"a":`, depth)+`1`+strings.Repeat("}", depth)+`,"gl_path":"/a/"}`,
			`{"gl_path":"/a/","inbound_headers":`+strings.Repeat("[", depth)+strings.Repeat("]", depth)+`}`,
		)
	}
	c = append(c,
		strings.Repeat("[", 10000)+strings.Repeat("]", 10000),
		strings.Repeat("[", 10001)+strings.Repeat("]", 10001),
		`{"x":`+strings.Repeat("[", 20000), // deep and unterminated
		// A megabyte.
		`{"x":"`+strings.Repeat("a", 1<<20)+`","gl_path":"/a/"}`,
		`{"gl_path":"/`+strings.Repeat("a", 1<<20)+`/"}`,
		`{"x":[`+strings.Repeat(`{"y":1.5},`, 1<<16)+`0],"gl_path":"/a/"}`,
	)
	return c
}

func TestParserAgreesWithEncodingJSON(t *testing.T) {
	for i, msg := range parseCorpus() {
		t.Run(fmt.Sprint(i), func(t *testing.T) { agree(t, []byte(msg)) })
	}
}

// FuzzParse holds gecholog.Parse to encoding/json on whatever the fuzzer
// makes of the corpus:
//
//	go test -run '^$' -fuzz '^FuzzParse$' -fuzztime 30s ./broker
func FuzzParse(f *testing.F) {
	for _, msg := range parseCorpus() {
		if len(msg) < 4096 { // the fuzzer mutates small inputs best
			f.Add([]byte(msg))
		}
	}
	f.Fuzz(agree)
}
