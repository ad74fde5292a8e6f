package gecholog_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/gecholog"
)

// The differential test of Parse against encoding/json, and FuzzParse, are
// in the broker package's fuzz_test.go, where the README's test command
// fuzzes.

func TestParseReadsGechologsFields(t *testing.T) {
	is := is.New(t)
	m, err := gecholog.Parse([]byte(`{"gl_path":"\/azure\/dud\/","egress_status_code":429,"inbound_headers":{"Retry-After":["30"]}}`))
	is.NoErr(err)
	is.Equal(string(m.Path), "/azure/dud/")                               // escapes decoded
	is.Equal(m.Status, 429)                                               // the status
	is.Equal(string(m.Headers), `{"Retry-After":["30"]}`)                 // the headers as sent
	is.Equal(gecholog.RetryAfter(m.Headers, time.Time{}), 30*time.Second) // and read when needed
}

func TestParseNamesWhatIsWrong(t *testing.T) {
	for _, tc := range []struct {
		msg, want string
		malformed bool // wraps ErrMalformed
	}{
		{`{"gl_path":"/a/"`, "unexpected end of JSON input", true},
		{`{"gl_path":"/a/"} x`, "invalid character 'x' after top-level value at offset 18", true},
		{`{"gl_path":5}`, "cannot read a number into gl_path, which is a string", true},
		{`{"gl_path":"/a/","egress_status_code":502.0}`, "egress_status_code, which is a whole number", true},
		{`{"egress_status_code":502}`, `no "gl_path" string`, false},
		{`{"gl_path":"/a/","egress_status_code":5020}`, "egress_status_code 5020 is not an HTTP status", false},
	} {
		_, err := gecholog.Parse([]byte(tc.msg))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want it to say %q", tc.msg, err, tc.want)
		}
		if errors.Is(err, gecholog.ErrMalformed) != tc.malformed {
			t.Errorf("%s: errors.Is(%v, ErrMalformed) is %v, want %v", tc.msg, err, !tc.malformed, tc.malformed)
		}
	}
	_, err := gecholog.Parse([]byte(`{"egress_status_code":502}`))
	is.New(t).True(errors.Is(err, gecholog.ErrNoPath)) // a missing gl_path is ErrNoPath
}

func TestReplyIsWhatEncodingJSONWrites(t *testing.T) {
	for _, router := range []string{"/azure/gpt4/", "/a/", "/A1/b2/C3/", "", `/a"b/`, `/a\b/`, "/a<b>&/", "/é/", "/a\n/"} {
		want, _ := json.Marshal(map[string]string{"gl_path": router})
		is.New(t).Equal(string(gecholog.Reply(router)), string(want)) // router
	}
}

func TestRetryAfterHeaderIsReadInAnyCaseAsSecondsOrDate(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		headers string
		want    time.Duration
	}{
		{`{"Retry-After":["30"]}`, 30 * time.Second},
		{`{"retry-after":[" 7 "]}`, 7 * time.Second},
		{`{"RETRY-AFTER":["Wed, 25 Nov 2026 12:02:00 GMT"]}`, 2 * time.Minute},
		{`{"Retry-After":["Wed, 25 Nov 2026 11:00:00 GMT"]}`, 1}, // past: the floor applies
		{`{"Retry-After":["soon"]}`, 0},
		{`{"Retry-After":[]}`, 0},
		{`{"Content-Type":["application/json"]}`, 0},
		{`"not an object"`, 0},
		{``, 0},
	} {
		is.New(t).Equal(gecholog.RetryAfter([]byte(tc.headers), now), tc.want) // tc.headers
	}
}
