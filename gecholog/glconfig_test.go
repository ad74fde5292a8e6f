package gecholog_test

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/gecholog"
)

// repoGLConfig is the gl_config.json the compose file mounts into gecholog.
const repoGLConfig = "../gl_config.json"

const glSubject = "coburn.gl.broker"

// originalGLConfig is the gl_config.json the original broker shipped with,
// byte for byte: processors/broker/gl_config_broker.json in
// github.com/direktoren/gecholog-resources at commit
// 11b681a8559410ad13816b01ef5eaf07bb79ca84 (2024-09-26; MIT License,
// Copyright (c) 2024 direktoren), which that example's gecholog.Dockerfile
// copies to /app/conf/gl_config.json. Its response processor reads gl_path
// and egress_status_code, not inbound_headers.
const originalGLConfig = "testdata/original_gl_config.json"

// readGLConfig decodes the repository's gl_config.json into plain maps and
// lists, for a test to break one thing in.
func readGLConfig(t *testing.T) map[string]any {
	t.Helper()
	b, err := os.ReadFile(repoGLConfig)
	if err != nil {
		t.Fatalf("read %s: %v", repoGLConfig, err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("decode %s: %v", repoGLConfig, err)
	}
	return m
}

func encodeGLConfig(t *testing.T, m map[string]any) []byte {
	t.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatalf("encode: %v", err)
	}
	return b
}

// glProcessor returns the first processor entry of section ("request" or
// "response"): the broker's, in the repository's file.
func glProcessor(m map[string]any, section string) map[string]any {
	layers := m[section].(map[string]any)["processors"].([]any)
	return layers[0].([]any)[0].(map[string]any)
}

// withoutGLRouter removes the router with path from the routers list.
func withoutGLRouter(m map[string]any, path string) {
	var keep []any
	for _, r := range m["routers"].([]any) {
		if r.(map[string]any)["path"] != path {
			keep = append(keep, r)
		}
	}
	m["routers"] = keep
}

// withoutField removes field from the list under key in p.
func withoutField(p map[string]any, key, field string) {
	var keep []any
	for _, f := range p[key].([]any) {
		if f != field {
			keep = append(keep, f)
		}
	}
	p[key] = keep
}

func TestRepoGLConfigRoutesTheDefaultPoolThroughTheBroker(t *testing.T) {
	is := is.New(t)
	f, err := os.Open(repoGLConfig)
	is.NoErr(err)
	defer f.Close()
	problems, err := gecholog.CheckGLConfig(f, broker.DefaultPools(), gecholog.Wiring{Subject: glSubject, RetryAfter: true})
	is.NoErr(err)
	is.Equal(problems, nil) // the shipped gl_config.json has no problems
}

func TestGLConfigCheckNamesTheFieldOfEachDefect(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(m map[string]any)
		field  string // the problem's field
		fix    string // a part of the problem's fix
		advice bool   // whether routing works without the fix
	}{
		{"a pool router that is no gecholog router",
			func(m map[string]any) { withoutGLRouter(m, "/azure/gpt4/") },
			"routers", `no router "/azure/gpt4/", which pool "/azure/" chooses`, false},
		{"a pool ingress that is no gecholog router",
			func(m map[string]any) { withoutGLRouter(m, "/azure/") },
			"routers", `no router "/azure/", the ingress of a pool`, false},
		{"an invalid router path",
			func(m map[string]any) { m["routers"].([]any)[0].(map[string]any)["path"] = "azure" },
			"routers[0].path", `"azure" is not a router path`, false},
		{"a request processor that is no modifier",
			func(m map[string]any) { glProcessor(m, "request")["modifier"] = false },
			"request.processors[0][0].modifier", "set true", false},
		{"an async request processor",
			func(m map[string]any) { glProcessor(m, "request")["async"] = true },
			"request.processors[0][0].async", "set false", false},
		{"a request processor that does not read gl_path",
			func(m map[string]any) { withoutField(glProcessor(m, "request"), "input_fields_include", "gl_path") },
			"request.processors[0][0].input_fields_include", `add "gl_path"`, false},
		{"a request processor that excludes gl_path",
			func(m map[string]any) { glProcessor(m, "request")["input_fields_exclude"] = []any{"gl_path"} },
			"request.processors[0][0].input_fields_exclude", `remove "gl_path"`, false},
		{"a request processor that cannot write gl_path",
			func(m map[string]any) { withoutField(glProcessor(m, "request"), "output_fields_write", "gl_path") },
			"request.processors[0][0].output_fields_write", `add "gl_path"`, false},
		{"a request processor with no time to answer",
			func(m map[string]any) { glProcessor(m, "request")["timeout"] = 0 },
			"request.processors[0][0].timeout", "0 ms: set it above 0", false},
		{"a request processor whose timeout delays every call while the broker is down",
			func(m map[string]any) { glProcessor(m, "request")["timeout"] = 5000 },
			"request.processors[0][0].timeout", "5000 ms: set it at most 1000", false},
		{"a request processor timeout that is not a number",
			func(m map[string]any) { glProcessor(m, "request")["timeout"] = "50" },
			"request.processors[0][0].timeout", "a string, not a number", false},
		{"two request processors on the glSubject",
			func(m map[string]any) {
				layers := m["request"].(map[string]any)["processors"].([]any)
				m["request"].(map[string]any)["processors"] = append(layers, []any{glProcessor(m, "request")})
			},
			"request.processors", `2 processors on "coburn.gl.broker" (request.processors[0][0], request.processors[1][0])`, false},
		{"no request processor on the glSubject",
			func(m map[string]any) { m["request"].(map[string]any)["processors"] = []any{} },
			"request.processors", `no processor on "coburn.gl.broker": add the broker as a request processor`, false},
		{"request processors that are not a list of layers",
			func(m map[string]any) { m["request"].(map[string]any)["processors"] = []any{glProcessor(m, "request")} },
			"request.processors[0]", "not a layer", false},
		{"a response processor that does not read egress_status_code",
			func(m map[string]any) {
				withoutField(glProcessor(m, "response"), "input_fields_include", "egress_status_code")
			},
			"response.processors[0][0].input_fields_include", `add "egress_status_code"`, false},
		{"a response processor that does not read gl_path",
			func(m map[string]any) { withoutField(glProcessor(m, "response"), "input_fields_include", "gl_path") },
			"response.processors[0][0].input_fields_include", `add "gl_path"`, false},
		{"a response processor that does not read inbound_headers",
			func(m map[string]any) {
				withoutField(glProcessor(m, "response"), "input_fields_include", "inbound_headers")
			},
			"response.processors[0][0].input_fields_include", `add "inbound_headers": it carries the upstream's Retry-After`, true},
		{"a response processor that excludes inbound_headers",
			func(m map[string]any) { glProcessor(m, "response")["input_fields_exclude"] = []any{"inbound_headers"} },
			"response.processors[0][0].input_fields_exclude", `remove "inbound_headers": it carries the upstream's Retry-After`, true},
		{"a synchronous response processor",
			func(m map[string]any) { glProcessor(m, "response")["async"] = false },
			"response.processors[0][0].async", "set true", false},
		{"a response processor with no time to answer",
			func(m map[string]any) { glProcessor(m, "response")["timeout"] = 0 },
			"response.processors[0][0].timeout", "0 ms: set it above 0", false},
		{"the broker's response processor on another glSubject",
			func(m map[string]any) { glProcessor(m, "response")["service_bus_topic"] = "other.broker" },
			"response.processors", `no processor on "coburn.gl.broker": add the broker as a response processor`, false},
		{"a processor entry of the wrong type",
			func(m map[string]any) { glProcessor(m, "request")["modifier"] = "true" },
			"request.processors[0][0].modifier", "a string, not true or false", false},
		{"routers that are not a list",
			func(m map[string]any) { m["routers"] = map[string]any{} },
			"routers", "an object, not a list", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			is := is.New(t)
			m := readGLConfig(t)
			tc.mutate(m)
			problems, err := gecholog.CheckGLConfig(bytes.NewReader(encodeGLConfig(t, m)), broker.DefaultPools(), gecholog.Wiring{Subject: glSubject, RetryAfter: true})
			is.NoErr(err)
			is.Equal(len(problems), 1) // one defect is one problem
			if len(problems) != 1 {
				t.Logf("problems: %q", problems)
				return
			}
			p := problems[0]
			is.Equal(p.Field, tc.field)                  // the problem names the field
			is.True(strings.Contains(p.Fix, tc.fix))     // the fix says what to do
			is.Equal(p.Advice, tc.advice)                // only an extra is advice; what breaks routing is an error
			is.True(!strings.Contains(p.String(), "\n")) // in one line
		})
	}
}

func TestGLConfigProblemSaysGechologKeepsTheIngressForAMissingRouter(t *testing.T) {
	is := is.New(t)
	m := readGLConfig(t)
	withoutGLRouter(m, "/azure/dud/")
	problems, err := gecholog.CheckGLConfig(bytes.NewReader(encodeGLConfig(t, m)), broker.DefaultPools(), gecholog.Wiring{Subject: glSubject, RetryAfter: true})
	is.NoErr(err)
	is.Equal(len(problems), 1)
	is.True(strings.Contains(problems[0].Fix, `gecholog silently keeps the call on the ingress "/azure/"`)) // the fix says why it matters
}

func TestGLConfigProblemPointsAtTheBrokerOnAnotherSubject(t *testing.T) {
	is := is.New(t)
	m := readGLConfig(t)
	glProcessor(m, "request")["service_bus_topic"] = "coburn.gl.other"
	problems, err := gecholog.CheckGLConfig(bytes.NewReader(encodeGLConfig(t, m)), broker.DefaultPools(), gecholog.Wiring{Subject: glSubject, RetryAfter: true})
	is.NoErr(err)
	is.Equal(len(problems), 1)
	is.True(strings.Contains(problems[0].Fix, `request.processors[0][0], named "broker", is on "coburn.gl.other"`)) // the likely culprit is named
}

func TestOriginalBrokersGLConfigRoutesWithOneAdvice(t *testing.T) {
	is := is.New(t)
	f, err := os.Open(originalGLConfig)
	is.NoErr(err)
	defer f.Close()
	problems, err := gecholog.CheckGLConfig(f, broker.DefaultPools(), gecholog.Wiring{Subject: glSubject, RetryAfter: true})
	is.NoErr(err)
	is.Equal(len(problems), 1) // only inbound_headers is missing
	if len(problems) != 1 {
		t.Logf("problems: %q", problems)
		return
	}
	p := problems[0]
	is.True(p.Advice) // the original's file routes and fails over as it is
	is.Equal(p.Field, "response.processors[0][0].input_fields_include")
	is.True(strings.HasPrefix(p.String(), `advice: response.processors[0][0].input_fields_include: add "inbound_headers"`)) // marked as advice, naming the field to add
	is.True(strings.Contains(p.Fix, "Retry-After"))                                                                         // and the extra it turns on
}

func TestGLConfigProblemStringMarksAdviceOnly(t *testing.T) {
	is := is.New(t)
	is.Equal(gecholog.Problem{Field: "f", Fix: "do x"}.String(), "f: do x")
	is.Equal(gecholog.Problem{Field: "f", Fix: "do x", Advice: true}.String(), "advice: f: do x")
}

func TestGLConfigWithoutRetryAfterNeedsNoInboundHeaders(t *testing.T) {
	is := is.New(t)
	m := readGLConfig(t)
	withoutField(glProcessor(m, "response"), "input_fields_include", "inbound_headers")
	problems, err := gecholog.CheckGLConfig(bytes.NewReader(encodeGLConfig(t, m)), broker.DefaultPools(), gecholog.Wiring{Subject: glSubject})
	is.NoErr(err)
	is.Equal(problems, nil)
}

func TestGLConfigPoolsAreCheckedAgainstTheRouters(t *testing.T) {
	is := is.New(t)
	pools := []broker.Pool{{Ingress: "/azure/", Routers: []broker.Router{{Path: "/azure/gpt4/"}, {Path: "/azure/gpt4o/"}}}}
	f, err := os.Open(repoGLConfig)
	is.NoErr(err)
	defer f.Close()
	problems, err := gecholog.CheckGLConfig(f, pools, gecholog.Wiring{Subject: glSubject, RetryAfter: true})
	is.NoErr(err)
	is.Equal(len(problems), 1)
	is.True(strings.Contains(problems[0].String(), `routers: no router "/azure/gpt4o/"`)) // only the router gecholog lacks is named
}

func TestGLConfigCheckPlaceholdersAreReadAsTheyAre(t *testing.T) {
	is := is.New(t)
	m := readGLConfig(t)
	m["routers"].([]any)[0].(map[string]any)["path"] = "${ECHO_PATH}"
	problems, err := gecholog.CheckGLConfig(bytes.NewReader(encodeGLConfig(t, m)), broker.DefaultPools(), gecholog.Wiring{Subject: glSubject, RetryAfter: true})
	is.NoErr(err)
	is.Equal(problems, nil) // gecholog fills in a placeholder path; the check cannot judge it
}

func TestGLConfigThatCannotBeReadIsOneError(t *testing.T) {
	for _, tc := range []struct {
		name, file, want string
	}{
		{"not JSON", "{\n  \"routers\": [],\n}\n", "not valid JSON at line 3, column 1"},
		{"an unquoted placeholder", "{\n  \"gl_port\": ${GL_PORT}\n}\n", "unquoted ${NAME} placeholder"},
		{"cut short", "{\n  \"routers\": [\n", "the file ends before the JSON is complete"},
		{"empty", "  \n", "the file is empty"},
		{"a list, not an object", "[]", "not a gl_config.json: the file holds a list"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			is := is.New(t)
			problems, err := gecholog.CheckGLConfig(strings.NewReader(tc.file), broker.DefaultPools(), gecholog.Wiring{Subject: glSubject, RetryAfter: true})
			is.True(err != nil)                             // the file cannot be checked
			is.Equal(problems, nil)                         // and no problems are guessed at
			is.True(strings.Contains(err.Error(), tc.want)) // the error says what is wrong and where
			is.True(!strings.Contains(err.Error(), "\n"))   // in one line
		})
	}
}

// A pool choosing by latency or headroom reads gecholog's transaction log:
// a gl_config.json that logs elsewhere than the broker reads gets advice
// naming both subjects and the setting that joins them.
func TestGLConfigLoggingElsewhereThanTheBrokerReadsIsAdviceForPoolsThatReadTheLog(t *testing.T) {
	reads := []broker.Pool{broker.DefaultPools()[0], {Ingress: "/openai/", Strategy: "headroom",
		Routers: []broker.Router{{Path: "/azure/gpt4/", Weight: 1}}}}
	reads[0].Strategy = "latency"
	for _, tc := range []struct {
		name   string
		logger any // service_bus.topic_exact_logger; nil: none
		pools  []broker.Pool
		want   string // "": no problem
	}{
		{"the same subject", "coburn.gl.logger", reads, ""},
		{"another subject", "gl.prod.logger", reads,
			`advice: service_bus.topic_exact_logger: "gl.prod.logger", but the broker reads gecholog's transaction log on "coburn.gl.logger": run the broker with BROKER_LOGGER_SUBJECT=gl.prod.logger (-logger-subject); until then pools /azure/ (latency), /openai/ (headroom) choose at random`},
		{"none", nil, reads,
			`advice: service_bus.topic_exact_logger: missing: set it to "coburn.gl.logger", the subject the broker reads gecholog's transaction log on; without it pools /azure/ (latency), /openai/ (headroom) choose at random`},
		{"a placeholder", "${LOGGER_TOPIC}", reads, ""},
		{"no pool reads the log", "gl.prod.logger", broker.DefaultPools(), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			is := is.New(t)
			m := readGLConfig(t)
			bus := m["service_bus"].(map[string]any)
			delete(bus, "topic_exact_logger")
			if tc.logger != nil {
				bus["topic_exact_logger"] = tc.logger
			}
			// The pools' routers, so that only the logger is in question.
			m["routers"] = append(m["routers"].([]any), map[string]any{"path": "/openai/", "ingress": map[string]any{}, "outbound": map[string]any{}})
			problems, err := gecholog.CheckGLConfig(bytes.NewReader(encodeGLConfig(t, m)), tc.pools,
				gecholog.Wiring{Subject: glSubject, LoggerSubject: "coburn.gl.logger", RetryAfter: true})
			is.NoErr(err)
			if tc.want == "" {
				is.Equal(problems, nil)
				return
			}
			is.Equal(len(problems), 1)
			is.True(problems[0].Advice) // the broker routes and fails over without it
			is.Equal(problems[0].String(), tc.want)
		})
	}
}
