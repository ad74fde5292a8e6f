package gecholog_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/gecholog"
	"github.com/gecholog/broker/internal/standin"
)

func TestParseTransactionReadsTheFewFieldsOfAWholeTransaction(t *testing.T) {
	is := is.New(t)
	start := time.Date(2026, 11, 28, 20, 25, 24, 675919620, time.UTC)
	data := standin.Transaction(standin.Finished{
		Ingress: "/azure/", Router: "/azure/gpt4/", Status: 429, Start: start, Latency: 958634 * time.Nanosecond,
		Headers: map[string]string{"x-ratelimit-remaining-requests": "0"}, Payload: 1 << 20,
	})
	is.True(len(data) > 2<<20) // the prompt and the completion, a megabyte each

	tx, err := gecholog.ParseTransaction(data)
	is.NoErr(err)
	is.Equal(string(tx.Router), "/azure/gpt4/") // response.gl_path
	is.Equal(tx.Status, 429)                    // response.egress_status_code
	is.True(tx.Start.Equal(start))              // the timer's start
	lat, ok := tx.Latency()
	is.True(ok)                             // the transaction is read
	is.Equal(lat, 958634*time.Nanosecond)   // stop − start, exact where duration says 0
	is.True(tx.HasDuration)                 // its upstream time is known
	is.Equal(tx.Duration, time.Duration(0)) // whole milliseconds, truncated
	var headers map[string][]string
	is.NoErr(json.Unmarshal(tx.Headers, &headers))
	is.Equal(headers["X-Ratelimit-Remaining-Requests"], []string{"0"}) // inbound_headers, as sent
}

func TestParseTransactionReadsTheIngressTheClientCalled(t *testing.T) {
	is := is.New(t)
	tx, err := gecholog.ParseTransaction(standin.Transaction(standin.Finished{Ingress: "/azure/", Router: "/azure/gpt4/", Payload: 100}))
	is.NoErr(err)
	is.Equal(string(tx.Ingress), "/azure/") // request.original_gl_path
	for _, tc := range []struct{ msg, want string }{
		{`{"request":{"original_gl_path":"/azure\/"},"response":{"gl_path":"/a/"}}`, "/azure/"}, // decoded
		{`{"request":{"original_gl_path":null},"response":{"gl_path":"/a/"}}`, ""},
		{`{"request":{"gl_path":"/a/"}}`, ""},
		{`{"request":{"original_gl_path":"/x/"},"request":null,"response":{"gl_path":"/a/"}}`, ""}, // a null request forgets it
	} {
		tx, err := gecholog.ParseTransaction([]byte(tc.msg))
		is.NoErr(err)
		is.Equal(string(tx.Ingress), tc.want) // tc.msg
	}
	_, err = gecholog.ParseTransaction([]byte(`{"request":{"original_gl_path":7},"response":{"gl_path":"/a/"}}`))
	is.True(errors.Is(err, gecholog.ErrMalformedTransaction)) // not a string: what encoding/json refuses
}

func TestParseTransactionReadsTheSessionOfTheCall(t *testing.T) {
	is := is.New(t)
	data := standin.Transaction(standin.Finished{Ingress: "/azure/", Router: "/azure/gpt4/", Session: "AAA00001_1696681410696216000_3_0"})
	tx, err := gecholog.ParseTransaction(data)
	is.NoErr(err)
	is.Equal(string(tx.Session), "AAA00001_1696681410696216000_3") // the session: the id's first three parts
	for _, id := range []string{
		`"AAA00001_1696681410696216000_3"`, `"AAA00001__3_0"`, `"A_B_C_D_E"`, `""`, `null`, `7`, `["A_B_C_D"]`,
		`"AAA00001_1696681410696216000_3_\u0030"`, `"` + strings.Repeat("x", 300) + `_1_2_3"`,
	} {
		tx, err := gecholog.ParseTransaction([]byte(`{"session_id":` + id + `,"response":{"gl_path":"/a/","egress_status_code":200}}`))
		is.NoErr(err)             // a bad session_id is no error:
		is.Equal(tx.Session, nil) // no session,
		is.Equal(tx.Status, 200)  // and the rest counts
		is.Equal(string(tx.Router), "/a/")
	}
}

func TestTransactionLatencyFallsBackToTheWholeMilliseconds(t *testing.T) {
	for _, tc := range []struct {
		msg  string
		want time.Duration
		ok   bool
	}{
		{`{"response":{"gl_path":"/a/","outbound_inbound_timer":{"start":"2026-11-28T20:25:24.5Z","stop":"2026-11-28T20:25:25.75Z","duration":1250}}}`, 1250 * time.Millisecond, true},
		{`{"response":{"gl_path":"/a/","outbound_inbound_timer":{"duration":7,"stop":"2026-11-28T20:25:25.75+01:00","start":"2026-11-28T19:25:25.7432Z"}}}`, 6800 * time.Microsecond, true},
		{`{"response":{"gl_path":"/a/","outbound_inbound_timer":{"start":"2026-11-28T20:25:24.5Z","duration":1250}}}`, 1250 * time.Millisecond, true},
		{`{"response":{"gl_path":"/a/","outbound_inbound_timer":{"duration":0}}}`, 0, true},
		{`{"response":{"gl_path":"/a/","outbound_inbound_timer":{"start":"2026-11-28T20:25:25Z","stop":"2026-11-28T20:25:24Z"}}}`, -time.Second, false},
		{`{"response":{"gl_path":"/a/","outbound_inbound_timer":{"duration":-5}}}`, -5 * time.Millisecond, false},
		{`{"response":{"gl_path":"/a/","outbound_inbound_timer":null}}`, 0, false},
		{`{"response":{"gl_path":"/a/"}}`, 0, false},
	} {
		tx, err := gecholog.ParseTransaction([]byte(tc.msg))
		is.New(t).NoErr(err)
		d, ok := tx.Latency()
		if d != tc.want || ok != tc.ok {
			t.Errorf("%s: latency %v %v, want %v %v", tc.msg, d, ok, tc.want, tc.ok)
		}
	}
}

func TestParseTransactionTakesTheRequestsRouterWhenTheResponseHasNone(t *testing.T) {
	is := is.New(t)
	tx, err := gecholog.ParseTransaction([]byte(`{"response":{"egress_status_code":504},"request":{"gl_path":"/azure/dud/","original_gl_path":"/azure/"}}`))
	is.NoErr(err)
	is.Equal(string(tx.Router), "/azure/dud/") // request.gl_path
	tx, err = gecholog.ParseTransaction([]byte(`{"response":{"gl_path":"/b/"},"request":{"gl_path":"/a/"}}`))
	is.NoErr(err)
	is.Equal(string(tx.Router), "/b/") // response.gl_path wins
	_, err = gecholog.ParseTransaction([]byte(`{"response":{"egress_status_code":200},"gl_path":"/a/"}`))
	is.True(errors.Is(err, gecholog.ErrNoRouter)) // neither
}

func TestParseTransactionIgnoresOneTooLargeToRead(t *testing.T) {
	is := is.New(t)
	data := standin.Transaction(standin.Finished{Ingress: "/a/", Payload: gecholog.MaxTransaction / 2})
	is.True(len(data) > gecholog.MaxTransaction) // the test transaction is over the limit
	_, err := gecholog.ParseTransaction(data)
	is.True(errors.Is(err, gecholog.ErrTooLarge)) // not scanned
}

// TestParseTransactionNamesWhatIsWrong pins the errors' words, which the
// differential test does not compare: the field's path in the
// transaction, and "another JSON value" for whatever came instead, as
// ParseTransaction has always said (Parse names what came).
func TestParseTransactionNamesWhatIsWrong(t *testing.T) {
	const malformed = "transaction is not a JSON object with gecholog's request and response: "
	for _, tc := range []struct{ msg, want string }{
		{`{"response":{"gl_path":5}}`, "cannot read another JSON value into response.gl_path, which is a string"},
		{`{"response":[]}`, "cannot read another JSON value into response, which is an object"},
		{`[1]`, "cannot read another JSON value into the transaction, which is an object"},
		{`{"request":{"gl_path":"/a/"},"response":{"egress_status_code":502.0}}`,
			"cannot read a number with a fraction or exponent, or too large into response.egress_status_code, which is a whole number"},
		{`{"response":{"gl_path":"/a/","outbound_inbound_timer":{"start":"noon"}}}`,
			`response.outbound_inbound_timer.start: parsing time "noon" as "2006-01-02T15:04:05Z07:00": cannot parse "noon" as "2006"`},
		{`{"response":{"gl_path":"/a/"}} x`, "invalid character 'x' after top-level value at offset 31"},
	} {
		_, err := gecholog.ParseTransaction([]byte(tc.msg))
		is.New(t).Equal(fmt.Sprint(err), malformed+tc.want) // tc.msg
	}
}

// stdTransaction is what gecholog.ParseTransaction's scanner stands in for:
// the transaction as encoding/json reads it.
type stdTransaction struct {
	SessionID json.RawMessage `json:"session_id"`
	Request   *struct {
		GLPath         *string `json:"gl_path"`
		OriginalGLPath *string `json:"original_gl_path"`
	} `json:"request"`
	Response *struct {
		GLPath *string `json:"gl_path"`
		Status *int    `json:"egress_status_code"`
		Timer  *struct {
			Start    *time.Time `json:"start"`
			Stop     *time.Time `json:"stop"`
			Duration *int       `json:"duration"`
		} `json:"outbound_inbound_timer"`
		Headers json.RawMessage `json:"inbound_headers"`
		Payload json.RawMessage `json:"inbound_payload"`
	} `json:"response"`
}

// want is what ParseTransaction must give when encoding/json reads std.
func (std stdTransaction) want() (tx gecholog.Transaction, router bool) {
	tx.Session = stdSession(std.SessionID)
	if r := std.Request; r != nil && r.GLPath != nil {
		tx.Router, router = []byte(*r.GLPath), true
	}
	if r := std.Request; r != nil && r.OriginalGLPath != nil {
		tx.Ingress = []byte(*r.OriginalGLPath)
	}
	r := std.Response
	if r == nil {
		return tx, router
	}
	if r.GLPath != nil {
		tx.Router, router = []byte(*r.GLPath), true
	}
	if r.Status != nil {
		tx.Status, tx.HasStatus = *r.Status, true
	}
	tx.Headers = r.Headers
	tx.Usage = stdUsage(r.Payload)
	if tm := r.Timer; tm != nil {
		if tm.Start != nil {
			tx.Start = *tm.Start
		}
		if tm.Stop != nil {
			tx.Stop = *tm.Stop
		}
		if tm.Duration != nil {
			tx.HasDuration = true
			ms := *tm.Duration
			switch {
			case ms > math.MaxInt64/int(time.Millisecond):
				tx.Duration = math.MaxInt64
			case ms < math.MinInt64/int(time.Millisecond):
				tx.Duration = math.MinInt64
			default:
				tx.Duration = time.Duration(ms) * time.Millisecond
			}
		}
	}
	return tx, router
}

// stdSession is the session key of session_id as sent: a plain string of
// four non-empty parts joined by '_', at most 256 bytes, without escapes
// (which no id gecholog makes has); its first three parts.
func stdSession(raw json.RawMessage) []byte {
	s := string(raw)
	if len(s) < 2 || s[0] != '"' || s[len(s)-1] != '"' || strings.Contains(s, `\`) {
		return nil
	}
	s = s[1 : len(s)-1]
	parts := strings.Split(s, "_")
	if len(s) > 256 || len(parts) != 4 || slices.Contains(parts, "") {
		return nil
	}
	return []byte(strings.Join(parts[:3], "_"))
}

// agreeTransaction fails t unless ParseTransaction and json.Unmarshal
// both refuse data, or both accept it with the same values. The scanner
// accepted when it gave no error, or only ErrNoRouter.
func agreeTransaction(t *testing.T, data []byte) {
	t.Helper()
	in := bytes.Clone(data)
	tx, err := gecholog.ParseTransaction(data)
	if !bytes.Equal(in, data) {
		t.Fatalf("ParseTransaction changed its input")
	}
	if len(data) > gecholog.MaxTransaction {
		if !errors.Is(err, gecholog.ErrTooLarge) {
			t.Fatalf("a transaction of %d bytes was read: %v", len(data), err)
		}
		return
	}
	var std stdTransaction
	stdErr := json.Unmarshal(data, &std)
	scanned := err == nil || errors.Is(err, gecholog.ErrNoRouter)
	if scanned != (stdErr == nil) {
		t.Fatalf("%.300q: scanner says %v, encoding/json says %v", data, err, stdErr)
	}
	if err != nil && !errors.Is(err, gecholog.ErrNoRouter) && !errors.Is(err, gecholog.ErrMalformedTransaction) {
		t.Fatalf("%.300q: error %v is neither ErrNoRouter nor ErrMalformedTransaction", data, err)
	}
	if !scanned {
		return
	}
	want, router := std.want()
	if errors.Is(err, gecholog.ErrNoRouter) == router || tx.HasRouter != router || string(tx.Router) != string(want.Router) {
		t.Fatalf("%.300q: router %v %q (%v), encoding/json %v %q", data, tx.HasRouter, tx.Router, err, router, want.Router)
	}
	if tx.HasStatus != want.HasStatus || tx.Status != want.Status {
		t.Fatalf("%.300q: egress_status_code %v %d, encoding/json %v %d", data, tx.HasStatus, tx.Status, want.HasStatus, want.Status)
	}
	if !tx.Start.Equal(want.Start) || !tx.Stop.Equal(want.Stop) || tx.Start.Location().String() != want.Start.Location().String() {
		t.Fatalf("%.300q: timer %v to %v, encoding/json %v to %v", data, tx.Start, tx.Stop, want.Start, want.Stop)
	}
	if tx.HasDuration != want.HasDuration || tx.Duration != want.Duration {
		t.Fatalf("%.300q: duration %v %v, encoding/json %v %v", data, tx.HasDuration, tx.Duration, want.HasDuration, want.Duration)
	}
	if (tx.Headers == nil) != (want.Headers == nil) || !bytes.Equal(tx.Headers, want.Headers) {
		t.Fatalf("%.300q: inbound_headers %.100q, encoding/json %.100q", data, tx.Headers, want.Headers)
	}
	if (tx.Ingress == nil) != (want.Ingress == nil) || !bytes.Equal(tx.Ingress, want.Ingress) {
		t.Fatalf("%.300q: original_gl_path %q, encoding/json %q", data, tx.Ingress, want.Ingress)
	}
	if !bytes.Equal(tx.Session, want.Session) {
		t.Fatalf("%.300q: session %q, encoding/json %q", data, tx.Session, want.Session)
	}
	if tx.Usage != want.Usage {
		t.Fatalf("%.300q: usage %+v, encoding/json %+v", data, tx.Usage, want.Usage)
	}
}

// transactionCorpus is the edge cases of the fields read, in every place
// they are read from, and of the transaction around them; it is also the
// seed corpus of FuzzParseTransaction.
func transactionCorpus() []string {
	values := []string{
		// Strings, as gl_path and as times.
		`"/azure/gpt4/"`, `"\/azure\/"`, `"\u002fa\u002F"`, `"/a\"b\\c\n/"`, `"\ud83d\ude00"`, `"\ud83d"`, "\"/a\xff/\"",
		"\"/a\n/\"", `"\q"`, `"\u12G4"`, `""`, `"x"`, `"/`,
		`"2026-11-28T20:25:24.67591962Z"`, `"2026-11-28T20:25:24Z"`, `"2026-11-28T20:25:24.676878254+01:00"`,
		`"2026-11-28T20:25:24-23:59"`, `"2026-11-28T20:25:24+24:00"`, `"2026-11-28 20:25:24Z"`, `"2026-11-28T20:25:24"`,
		`"2026-11-28T20:25:24.Z"`, `"2026-11-28T20:25:24,5Z"`, `"2026-11-28T20:25:24z"`, `"2026-11-28T25:00:00Z"`,
		`"2026-02-30T00:00:00Z"`, `"2026-11-28T20:25:24.67591962\u005a"`, `"0001-01-01T00:00:00Z"`,
		`"9999-12-31T23:59:59.999999999Z"`, `" 2026-11-28T20:25:24Z"`, `"2026-11-28T2:25:24Z"`, "\"2026-11-28T20:25:24\xffZ\"",
		// Numbers, as egress_status_code and duration.
		`0`, `-0`, `200`, `502`, `-502`, `1250`, `502.0`, `5e2`, `5.02e2`, `1e400`, `9223372036854775807`,
		`9223372036854775808`, `-9223372036854775808`, `-9223372036854775809`, `9223372036854`, `-9223372036855`,
		`00502`, `+502`, `.5`, `502.`, `502e`, `0x1F6`, `-`, `NaN`,
		// Everything else.
		`null`, `nul`, `nulll`, `true`, `false`, `tru`, `{}`, `[]`, `{"a":1}`, `[1,2]`, `["30"]`,
		`{"Retry-After":["30"],"X-Ratelimit-Remaining-Requests":["0"]}`, `{"gl_path":"/x/"}`, `{"start":"2026-11-28T20:25:24Z"}`,
		`[`, `{`, `{"a"}`, `[1,]`, `{"a":1,}`,
		// Session ids.
		`"AAA00001_1696681410696216000_3_0"`, `"A_B_C_D"`, `"A__C_D"`, `"A_B_C"`, `"A_B_C_D_"`, `"A_B\u005fC_D"`, "\"A_B_C\xff_D\"",
	}
	places := []string{
		`{"response":{"gl_path":%s}}`,
		`{"request":{"gl_path":%s}}`,
		`{"request":{"original_gl_path":%s},"response":{"gl_path":"/a/"}}`,
		`{"request":{"gl_path":"/r/","original_gl_path":"/i/","original_gl_path":%s}}`,
		`{"request":{"gl_path":"/r/"},"response":{"egress_status_code":200,"gl_path":%s}}`,
		`{"response":{"gl_path":"/a/","egress_status_code":%s}}`,
		`{"response":{"gl_path":"/a/","outbound_inbound_timer":{"start":%s,"stop":"2026-11-28T20:25:24.676878254Z","duration":0}}}`,
		`{"response":{"outbound_inbound_timer":{"stop":%s,"start":"2026-11-28T20:25:24.67591962Z"},"gl_path":"/a/"}}`,
		`{"response":{"gl_path":"/a/","outbound_inbound_timer":{"duration":%s}}}`,
		`{"response":{"gl_path":"/a/","outbound_inbound_timer":%s}}`,
		`{"response":{"gl_path":"/a/","inbound_headers":%s}}`,
		`{"response":{"gl_path":"/a/","inbound_payload":%s,"inbound_status_code":%[1]s}}`,
		`{"request":%s,"response":{"egress_status_code":200}}`,
		`{"request":{"gl_path":"/r/"},"response":%s}`,
		`{"response":{"gl_path":"/a/","egress_status_code":200},"response":%s}`,
		`{"x":%s,"response":{"gl_path":"/a/"}}`,
		`{"session_id":%s,"response":{"gl_path":"/a/"}}`,
		`{"session_id":"A_B_C_D","response":{"gl_path":"/a/"},"session_id":%s}`,
		`{"gl_path":%s,"egress_status_code":200}`,
		`%s`,
	}
	var c []string
	for _, p := range places {
		for _, v := range values {
			c = append(c, fmt.Sprintf(p, v))
		}
	}
	c = append(c,
		// Keys as encoding/json matches them.
		`{"RESPONSE":{"GL_PATH":"/a/","Egress_Status_Code":502}}`,
		`{"Request":{"Gl_Path":"/r/"}}`,
		`{"re\u0073ponse":{"gl\u005fpath":"/a/"}}`,
		"{\"response\":{\"gl_path\":\"/a/\",\"outbound_inbound_timer\":{\"\u017ftart\":\"2026-11-28T20:25:24Z\",\"\u017fTOP\":\"2026-11-28T20:25:25Z\"}}}",
		`{"response":{"gl_path":"/a/","OUTBOUND_INBOUND_TIMER":{"DURATION":12}}}`,
		`{"response":{"gl_path":"/a/","Inbound_Headers":{"a":["1"]}}}`,
		`{"response ":{"gl_path":"/a/"}}`,
		`{"respons":{"gl_path":"/a/"}}`,
		`{"response":{"gl_path":"/a/","outbound_inbound_timers":{"duration":1}}}`,
		// Given twice: the last wins, objects merge, null resets.
		`{"response":{"gl_path":"/a/"},"response":{"egress_status_code":200}}`,
		`{"response":{"gl_path":"/a/"},"response":null}`,
		`{"response":null,"response":{"gl_path":"/a/"}}`,
		`{"response":{"gl_path":"/a/","gl_path":"/b/"}}`,
		`{"response":{"gl_path":"/a/","gl_path":null}}`,
		`{"response":{"gl_path":"/a/","outbound_inbound_timer":{"start":"2026-11-28T20:25:24Z"},"outbound_inbound_timer":{"stop":"2026-11-28T20:25:25Z"}}}`,
		`{"response":{"gl_path":"/a/","outbound_inbound_timer":{"start":"2026-11-28T20:25:24Z"},"outbound_inbound_timer":null}}`,
		`{"response":{"gl_path":"/a/","outbound_inbound_timer":{"start":"2026-11-28T20:25:24Z","start":null}}}`,
		`{"response":{"gl_path":"/a/","inbound_headers":{"a":["1"]},"inbound_headers":{"b":["2"]}}}`,
		`{"response":{"gl_path":"/a/","inbound_headers":{"a":["1"]}},"response":{"egress_status_code":429}}`,
		`{"request":{"gl_path":"/a/"},"request":{"original_gl_path":"/i/"}}`,
		`{"request":{"gl_path":"/a/"},"request":null,"response":{"gl_path":null}}`,
		// White space and what surrounds the object.
		" \t\r\n{ \"response\" \n: { \"gl_path\" : \"/a/\" , \"outbound_inbound_timer\" : { \"duration\" : 3 } } } \n",
		"{\"response\":{\"gl_path\":\"/a/\"}}\v",
		"\xef\xbb\xbf{\"response\":{\"gl_path\":\"/a/\"}}",
		`{"response":{"gl_path":"/a/"}} x`,
		`{"response":{"gl_path":"/a/"}}{}`,
		`{"response":{"gl_path":"/a/"}`,
		`{"response":{"gl_path":"/a/"},}`,
		`{,"response":{"gl_path":"/a/"}}`,
		`{"response" {"gl_path":"/a/"}}`,
		`{"response":{"gl_path":"/a/"} "x":1}`,
		``, ` `, `{`, `}`, `null`, ` null `, `null x`, `[]`, `"x"`, `1`,
		// Nesting at and beyond encoding/json's limit of 10000, at every level.
		`{"x":`+strings.Repeat("[", 9999)+strings.Repeat("]", 9999)+`,"response":{"gl_path":"/a/"}}`,
		`{"x":`+strings.Repeat("[", 10000)+strings.Repeat("]", 10000)+`,"response":{"gl_path":"/a/"}}`,
		`{"response":{"gl_path":"/a/","x":`+strings.Repeat("[", 9998)+strings.Repeat("]", 9998)+`}}`,
		`{"response":{"gl_path":"/a/","x":`+strings.Repeat("[", 9999)+strings.Repeat("]", 9999)+`}}`,
		`{"response":{"gl_path":"/a/","outbound_inbound_timer":{"x":`+strings.Repeat("[", 9997)+strings.Repeat("]", 9997)+`}}}`,
		`{"response":{"gl_path":"/a/","outbound_inbound_timer":{"x":`+strings.Repeat("[", 9998)+strings.Repeat("]", 9998)+`}}}`,
		`{"response":{"gl_path":"/a/","outbound_inbound_timer":{"start":`+strings.Repeat("[", 9998)+strings.Repeat("]", 9998)+`}}}`,
		`{"response":{"gl_path":"/a/","inbound_headers":`+strings.Repeat("[", 9999)+strings.Repeat("]", 9999)+`}}`,
		`{"response":{"gl_path":"/a/","inbound_headers":`+strings.Repeat("[", 10000)+strings.Repeat("]", 10000)+`}}`,
		`{"response":`+strings.Repeat("[", 20000),
	)
	return c
}

func TestParseTransactionAgreesWithEncodingJSON(t *testing.T) {
	for i, msg := range transactionCorpus() {
		t.Run(fmt.Sprint(i), func(t *testing.T) { agreeTransaction(t, []byte(msg)) })
	}
	// What gecholog sends, small and large, and broken at every few bytes.
	for _, payload := range []int{0, 100, 1 << 20} {
		whole := standin.Transaction(standin.Finished{
			Ingress: "/azure/", Router: "/azure/gpt4/", Latency: 1234567 * time.Nanosecond, Payload: payload,
			Headers: map[string]string{"x-ratelimit-remaining-requests": "99", "anthropic-ratelimit-tokens-reset": "2026-11-28T20:26:00Z"},
		})
		agreeTransaction(t, whole)
		step := max(len(whole)/500, 1)
		for n := 0; n < len(whole); n += step {
			agreeTransaction(t, whole[:n])
		}
	}
}

// FuzzParseTransaction holds gecholog.ParseTransaction to encoding/json
// on whatever the fuzzer makes of the corpus, and RateLimits to never
// failing on what it reads:
//
//	go test -run '^$' -fuzz '^FuzzParseTransaction$' -fuzztime 30s ./gecholog
func FuzzParseTransaction(f *testing.F) {
	for _, msg := range append(transactionCorpus(), usageCorpus()...) {
		if len(msg) < 4096 { // the fuzzer mutates small inputs best
			f.Add([]byte(msg))
		}
	}
	f.Add(standin.Transaction(standin.Finished{
		Ingress: "/azure/", Router: "/azure/gpt4/", Latency: time.Millisecond, Payload: 200,
		Headers: map[string]string{"x-ratelimit-remaining-requests": "99", "x-ratelimit-reset-requests": "6m0s"},
	}))
	f.Fuzz(func(t *testing.T, data []byte) {
		agreeTransaction(t, data)
		if tx, err := gecholog.ParseTransaction(data); err == nil {
			gecholog.RateLimits(tx.Headers, tx.Stop)
		}
		gecholog.RateLimits(data, time.Time{}) // anything at all
	})
}

func TestParseTransactionDoesNotAllocatePerByte(t *testing.T) {
	allocs := func(payload int) float64 {
		data := standin.Transaction(standin.Finished{Ingress: "/azure/", Router: "/azure/gpt4/", Latency: time.Millisecond, Payload: payload})
		return testing.AllocsPerRun(20, func() {
			if _, err := gecholog.ParseTransaction(data); err != nil {
				t.Fatal(err)
			}
		})
	}
	small, large := allocs(100), allocs(1<<20)
	if large != small || large > 2 {
		t.Errorf("%v allocations for a 2 MB transaction, %v for a small one: want the same, and at most 2", large, small)
	}
}

// BenchmarkParseTransaction reads a transaction with a prompt and a
// completion of half a megabyte each, as a replica reads each one from
// gecholog's log, and the rate-limit headers of one:
//
//	go test -run '^$' -bench Transaction -benchmem ./gecholog
func BenchmarkParseTransaction(b *testing.B) {
	for _, payload := range []int{1 << 10, 1 << 19} {
		data := standin.Transaction(standin.Finished{
			Ingress: "/azure/", Router: "/azure/gpt4/", Latency: 300 * time.Millisecond, Payload: payload,
			Headers: map[string]string{"x-ratelimit-remaining-requests": "99", "x-ratelimit-remaining-tokens": "14900", "x-ratelimit-reset-tokens": "6m0s"},
		})
		b.Run(fmt.Sprintf("size=%dKB", len(data)>>10), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				tx, err := gecholog.ParseTransaction(data)
				if err != nil || !tx.HasRouter {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkRateLimits(b *testing.B) {
	headers := []byte(`{"Content-Type":["application/json"],"Date":["Sat, 28 Nov 2026 20:25:24 GMT"],"X-Ratelimit-Limit-Requests":["100"],"X-Ratelimit-Limit-Tokens":["15000"],"X-Ratelimit-Remaining-Requests":["99"],"X-Ratelimit-Remaining-Tokens":["14900"],"X-Ratelimit-Reset-Requests":["600ms"],"X-Ratelimit-Reset-Tokens":["6m0s"],"X-Request-Id":["5c1b3f0e-8d7a-4f7e-9a57-1f0d2c3b4a59"]}`)
	at := time.Now()
	for b.Loop() {
		if l, _ := gecholog.RateLimits(headers, at); !l.Known() {
			b.Fatal("nothing read")
		}
	}
}
