package gecholog_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/gecholog"
)

// affinityPools are the default pool with affinity a.
func affinityPools(a broker.Affinity) []broker.Pool {
	pools := broker.DefaultPools()
	pools[0].Affinity = a
	return pools
}

// affinityAdvice checks m for pools and returns what it says, one line
// per problem. There is no error in the repository's file.
func affinityAdvice(t *testing.T, m map[string]any, pools []broker.Pool, header string) []string {
	t.Helper()
	problems, err := gecholog.CheckGLConfig(bytes.NewReader(encodeGLConfig(t, m)), pools,
		gecholog.Wiring{Subject: glSubject, RetryAfter: true, SessionHeader: header})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range problems {
		if !p.Advice {
			t.Errorf("an error, not advice: %s", p)
		}
		out = append(out, p.String())
	}
	return out
}

// withIngressHeaders adds ingress_headers to the broker's request
// processor entry, as README says a pool with affinity needs.
func withIngressHeaders(m map[string]any) {
	p := glProcessor(m, "request")
	p["input_fields_include"] = append(p["input_fields_include"].([]any), "ingress_headers")
}

func TestGLConfigWithoutIngressHeadersIsAdvisedForAPoolWithAffinity(t *testing.T) {
	for _, a := range []broker.Affinity{{Session: true}, {Header: "X-Conversation-Id"}} {
		is := is.New(t)
		got := affinityAdvice(t, readGLConfig(t), affinityPools(a), "")
		is.Equal(len(got), 1) // one advice: the request processor lacks ingress_headers
		is.True(strings.HasPrefix(got[0], `advice: request.processors[0][0].input_fields_include: add "ingress_headers": pools /azure/ (`))
		is.True(strings.Contains(got[0], "no call has a key")) // says what goes wrong without it
		is.True(strings.Contains(got[0], "API key"))           // and that the other headers are never kept
	}
}

func TestGLConfigExcludingIngressHeadersIsAdvisedForAPoolWithAffinity(t *testing.T) {
	is := is.New(t)
	m := readGLConfig(t)
	withIngressHeaders(m)
	glProcessor(m, "request")["input_fields_exclude"] = []any{"ingress_headers"}
	got := affinityAdvice(t, m, affinityPools(broker.Affinity{Header: "X-Conversation-Id"}), "")
	is.Equal(len(got), 1) // the exclude list takes it away again
	is.True(strings.HasPrefix(got[0], `advice: request.processors[0][0].input_fields_exclude: remove "ingress_headers": pools /azure/ (header X-Conversation-Id)`))
}

func TestGLConfigWithIngressHeadersAndTheSameSessionHeaderIsOK(t *testing.T) {
	is := is.New(t)
	m := readGLConfig(t)
	withIngressHeaders(m)
	is.Equal(affinityAdvice(t, m, affinityPools(broker.Affinity{Session: true}), ""), []string(nil))           // Session-Id, the default, in both
	is.Equal(affinityAdvice(t, m, affinityPools(broker.Affinity{Session: true}), "session-id"), []string(nil)) // header names match in any case
	is.Equal(affinityAdvice(t, m, affinityPools(broker.Affinity{Header: "X-Conv"}), "X-Other"), []string(nil)) // a header pool reads no session
}

func TestGLConfigWithoutAffinityNeedsNoIngressHeaders(t *testing.T) {
	is := is.New(t)
	m := readGLConfig(t)
	m["session_id_header"] = "X-Gl-Session"
	is.Equal(affinityAdvice(t, m, broker.DefaultPools(), ""), []string(nil)) // no pool reads a header: nothing to add
}

func TestGLConfigWithAnotherSessionHeaderSaysTheSettingThatFixesIt(t *testing.T) {
	is := is.New(t)
	m := readGLConfig(t)
	withIngressHeaders(m)
	m["session_id_header"] = "X-Gl-Session"
	got := affinityAdvice(t, m, affinityPools(broker.Affinity{Session: true}), "")
	is.Equal(got, []string{`advice: session_id_header: "X-Gl-Session", but the broker reads gecholog's session id from header "Session-Id": ` +
		`run the broker with BROKER_SESSION_HEADER=X-Gl-Session (-session-header), or set session_id_header to "Session-Id"; ` +
		`until then the calls of pools /azure/ have no session key and go by the pool's strategy`})

	is.Equal(affinityAdvice(t, m, affinityPools(broker.Affinity{Session: true}), "X-Gl-Session"), []string(nil)) // the broker set to it: nothing to say
}

func TestGLConfigSessionHeaderThatIsMissingOrNoHeaderIsAdvised(t *testing.T) {
	for _, tc := range []struct {
		name  string
		value any // nil: the field is left out
		want  string
	}{
		{"missing", nil, `advice: session_id_header: missing: set it to "Session-Id"`},
		{"a number", 3.0, `advice: session_id_header: a number, not a string: set it to "Session-Id"`},
		{"no header name", "Session Id", `advice: session_id_header: "Session Id" is not a header name: byte 8 (' ')`},
		{"a placeholder", "${SESSION_HEADER}", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			is := is.New(t)
			m := readGLConfig(t)
			withIngressHeaders(m)
			delete(m, "session_id_header")
			if tc.value != nil {
				m["session_id_header"] = tc.value
			}
			got := affinityAdvice(t, m, affinityPools(broker.Affinity{Session: true}), "")
			if tc.want == "" {
				is.Equal(got, []string(nil)) // gecholog fills a placeholder in; it cannot be checked
				return
			}
			is.Equal(len(got), 1)                          // one advice
			is.True(strings.HasPrefix(got[0], tc.want))    // says what is wrong and the fix
			is.True(strings.HasSuffix(got[0], "strategy")) // and what happens until then
		})
	}
}

func TestSessionHeaderNamesAreHTTPTokensOfAtMost256Bytes(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"Session-Id", true},
		{"x_gl.session~1", true},
		{strings.Repeat("a", gecholog.MaxSessionHeader), true},
		{strings.Repeat("a", gecholog.MaxSessionHeader+1), false},
		{"", false},
		{"Session Id", false},
		{"Session-Id:", false},
		{`Session"Id`, false},
		{`Session\Id`, false},
		{"Sessión", false},
		{"Session\x00", false},
	} {
		err := gecholog.CheckSessionHeader(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("CheckSessionHeader(%.40q) = %v, want ok %v", tc.name, err, tc.ok)
		}
	}
}
