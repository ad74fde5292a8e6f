package broker

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
)

// stdMessage is what the hand-written parser stands in for: the message
// as encoding/json reads it.
type stdMessage struct {
	GLPath  *string         `json:"gl_path"`
	Status  *int            `json:"egress_status_code"`
	Headers json.RawMessage `json:"inbound_headers"`
}

// agree fails t unless scanMessage and json.Unmarshal both refuse data, or
// both accept it with the same values, and parse and the encoding/json
// parse it replaced agree on accepting it.
func agree(t *testing.T, data []byte) {
	t.Helper()
	var std stdMessage
	stdErr := json.Unmarshal(data, &std)
	var m message
	err := scanMessage(data, &m)
	if (err == nil) != (stdErr == nil) {
		t.Fatalf("%.200q: scanner says %v, encoding/json says %v", data, err, stdErr)
	}
	if err == nil {
		if m.hasPath != (std.GLPath != nil) || m.hasPath && string(m.path) != *std.GLPath {
			t.Fatalf("%.200q: gl_path %v %q, encoding/json %v", data, m.hasPath, m.path, show(std.GLPath))
		}
		if m.hasStatus != (std.Status != nil) || m.hasStatus && m.status != *std.Status {
			t.Fatalf("%.200q: egress_status_code %v %d, encoding/json %v", data, m.hasStatus, m.status, show(std.Status))
		}
		if (m.headers == nil) != (std.Headers == nil) || !bytes.Equal(m.headers, std.Headers) {
			t.Fatalf("%.200q: inbound_headers %.100q, encoding/json %.100q", data, m.headers, std.Headers)
		}
	}

	_, err = parse(data)
	stdErr = parseStd(data)
	if (err == nil) != (stdErr == nil) {
		t.Fatalf("%.200q: parse says %v, the encoding/json parse says %v", data, err, stdErr)
	}
}

func show[T any](p *T) string {
	if p == nil {
		return "absent"
	}
	return fmt.Sprintf("%#v", *p)
}

// parseStd is the encoding/json parse that parse replaced.
func parseStd(data []byte) error {
	var m stdMessage
	if err := json.Unmarshal(data, &m); err != nil {
		return err
	}
	if m.GLPath == nil {
		return errNoPath
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

// FuzzParse holds the hand-written parser to encoding/json on whatever
// the fuzzer makes of the corpus: go test -fuzz FuzzParse ./broker
func FuzzParse(f *testing.F) {
	for _, msg := range parseCorpus() {
		if len(msg) < 4096 { // the fuzzer mutates small inputs best
			f.Add([]byte(msg))
		}
	}
	f.Fuzz(agree)
}

func TestParseReadsGechologsFields(t *testing.T) {
	is := is.New(t)
	m, err := parse([]byte(`{"gl_path":"\/azure\/dud\/","egress_status_code":429,"inbound_headers":{"Retry-After":["30"]}}`))
	is.NoErr(err)
	is.Equal(string(m.path), "/azure/dud/")                      // escapes decoded
	is.Equal(m.status, 429)                                      // the status
	is.Equal(string(m.headers), `{"Retry-After":["30"]}`)        // the headers as sent
	is.Equal(retryAfter(m.headers, time.Time{}), 30*time.Second) // and read when needed
}

func TestParseNamesWhatIsWrong(t *testing.T) {
	for _, tc := range []struct{ msg, want string }{
		{`{"gl_path":"/a/"`, "unexpected end of JSON input"},
		{`{"gl_path":"/a/"} x`, "invalid character 'x' after top-level value at offset 18"},
		{`{"gl_path":5}`, "cannot read a number into gl_path, which is a string"},
		{`{"gl_path":"/a/","egress_status_code":502.0}`, "egress_status_code, which is a whole number"},
		{`{"egress_status_code":502}`, `no "gl_path" string`},
		{`{"gl_path":"/a/","egress_status_code":5020}`, "egress_status_code 5020 is not an HTTP status"},
	} {
		_, err := parse([]byte(tc.msg))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want it to say %q", tc.msg, err, tc.want)
		}
	}
}

func TestReplyIsWhatEncodingJSONWrites(t *testing.T) {
	for _, router := range []string{"/azure/gpt4/", "/a/", "/A1/b2/C3/", "", `/a"b/`, `/a\b/`, "/a<b>&/", "/é/", "/a\n/"} {
		want, _ := json.Marshal(map[string]string{"gl_path": router})
		is.New(t).Equal(string(reply(router)), string(want)) // router
	}
}

func TestEscapedIngressIsChosenFor(t *testing.T) {
	is := is.New(t)
	b, err := New(Config{Pools: DefaultPools(), Policy: Policy{DisabledTime: time.Hour}})
	is.NoErr(err)
	var m struct {
		GLPath string `json:"gl_path"`
	}
	is.NoErr(json.Unmarshal(b.Handle([]byte(`{"gl_path":"\/azure\/"}`)), &m))
	is.True(strings.HasPrefix(m.GLPath, "/azure/") && m.GLPath != "/azure/") // a router of the pool
}
