package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/ops"
)

// originalGLConfigFile is the original broker's own gl_config.json; see
// gecholog/glconfig_test.go for where it comes from. Its response processor
// lacks inbound_headers, and nothing else: a user migrating from the
// original brings it as it is.
const originalGLConfigFile = "../../gecholog/testdata/original_gl_config.json"

// brokerEntry returns the broker's processor entry in section ("request"
// or "response") of the repository's gl_config.json.
func brokerEntry(m map[string]any, section string) map[string]any {
	layers := m[section].(map[string]any)["processors"].([]any)
	return layers[0].([]any)[0].(map[string]any)
}

// threeDefects breaks three things: a pool router is missing, the request
// processor is no modifier and the response processor is synchronous.
func threeDefects(m map[string]any) {
	var routers []any
	for _, r := range m["routers"].([]any) {
		if r.(map[string]any)["path"] != "/azure/dud/" {
			routers = append(routers, r)
		}
	}
	m["routers"] = routers
	brokerEntry(m, "request")["modifier"] = false
	brokerEntry(m, "response")["async"] = false
}

func TestCheckPassesOnTheRepoGLConfig(t *testing.T) {
	is := is.New(t)
	var out, errOut bytes.Buffer
	err := run(t.Context(), []string{"check", repoGLConfigFile}, env(), &out, &errOut)
	is.NoErr(err) // the shipped gl_config.json routes the default pool through the broker
	is.Equal(out.String(), repoGLConfigFile+": ok (1 pool, 3 routers, subject coburn.gl.broker)\n")
}

func TestCheckPassesOnTheOriginalsGLConfigWithOneAdvice(t *testing.T) {
	is := is.New(t)
	var out, errOut bytes.Buffer
	err := run(t.Context(), []string{"check", originalGLConfigFile}, env(), &out, &errOut)
	is.NoErr(err) // exit 0: the original's file routes the default pool through the broker
	is.Equal(lines(out.String()), []string{
		`advice: response.processors[0][0].input_fields_include: add "inbound_headers": it carries the upstream's Retry-After, which the broker honours; without it a 429 or 503 takes the router out for the broker's own disabled time, not as long as the upstream asks`,
		originalGLConfigFile + ": ok (1 pool, 3 routers, subject coburn.gl.broker)",
	}) // one advice line, then the ok line
	is.Equal(errOut.String(), "")
}

func TestServeStartsOnTheOriginalsGLConfigAndWarnsOnce(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	p := startProgram(t, env("NATS_URL", s.ClientURL()), "--gl-config", originalGLConfigFile)
	// The check let it start, and it routes.
	saysFirst(t, "the answer", awaitAnswer(t, natstest.Connect(t, s), "/azure/"), `{"gl_path":"/azure/`)

	var warnings []map[string]any
	for line := range strings.Lines(p.logs.String()) {
		var l map[string]any
		if json.Unmarshal([]byte(line), &l) == nil && l["msg"] == "gl-config advice" {
			warnings = append(warnings, l)
		}
	}
	is.Equal(len(warnings), 1) // the one piece of advice, logged once
	if len(warnings) != 1 {
		return
	}
	is.Equal(warnings[0]["level"], "WARN")
	is.Equal(warnings[0]["field"], "response.processors[0][0].input_fields_include")
	saysFirst(t, "the advice", fmt.Sprint(warnings[0]["advice"]), `add "inbound_headers"`) // naming the field to add
}

func TestCheckReadsTheFileNamedByBrokerGLConfig(t *testing.T) {
	is := is.New(t)
	var out bytes.Buffer
	err := run(t.Context(), []string{"check"}, env("BROKER_GL_CONFIG", repoGLConfigFile), &out, &bytes.Buffer{})
	is.NoErr(err)
	saysFirst(t, "the output", out.String(), repoGLConfigFile+": ok") // the file BROKER_GL_CONFIG names is checked
}

func TestCheckPrintsOneLinePerDefectAndFails(t *testing.T) {
	is := is.New(t)
	path := brokenGLConfig(t, threeDefects)
	var out, errOut bytes.Buffer
	err := run(t.Context(), []string{"check", path}, env(), &out, &errOut)
	is.True(err != nil)                                 // a broken config fails the command
	is.Equal(err.Error(), "check: 3 problems in "+path) // the error counts the problems
	got := lines(out.String())
	is.Equal(len(got), 3) // one line per defect
	saysFirst(t, "line 1", got[0], `routers: no router "/azure/dud/"`)
	saysFirst(t, "line 2", got[1], "request.processors[0][0].modifier: set true")
	saysFirst(t, "line 3", got[2], "response.processors[0][0].async: set true")
}

func TestCheckNamesThePoolRouterTheConfigLacks(t *testing.T) {
	is := is.New(t)
	pools := filepath.Join(t.TempDir(), "pools.json")
	is.NoErr(os.WriteFile(pools, []byte(`{"pools":[{"ingress":"/azure/","routers":[{"path":"/azure/gpt4/"},{"path":"/azure/gpt4o/"}]}]}`), 0o600))
	for _, tc := range []struct {
		name   string
		args   []string
		getenv func(string) string
	}{
		{"pools from BROKER_POOLS", []string{"check", repoGLConfigFile}, env("BROKER_POOLS", pools)},
		{"pools from a flag before the path", []string{"check", "-pools", pools, repoGLConfigFile}, env()},
		{"pools from a flag after the path", []string{"check", repoGLConfigFile, "-pools", pools}, env()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			is := is.New(t)
			var out bytes.Buffer
			err := run(t.Context(), tc.args, tc.getenv, &out, &bytes.Buffer{})
			is.True(err != nil) // a pool router gecholog lacks is a problem
			is.Equal(lines(out.String()), []string{
				`routers: no router "/azure/gpt4o/", which pool "/azure/" chooses: add it; when the broker names a router gecholog lacks, gecholog silently keeps the call on the ingress "/azure/", so the pool does not spread or fail over`,
			})
		})
	}
}

func TestCheckUsesTheBrokerSubject(t *testing.T) {
	is := is.New(t)
	var out bytes.Buffer
	err := run(t.Context(), []string{"check", repoGLConfigFile}, env("BROKER_SUBJECT", "coburn.gl.broker2"), &out, &bytes.Buffer{})
	is.True(err != nil) // the repo's config calls the broker on another subject
	got := lines(out.String())
	is.Equal(len(got), 2) // no request and no response processor on the subject
	saysFirst(t, "line 1", got[0], `request.processors: no processor on "coburn.gl.broker2"`)
	saysFirst(t, "line 2", got[1], `response.processors: no processor on "coburn.gl.broker2"`)
}

// A pool choosing by headroom reads gecholog's transaction log: the check
// compares where gecholog logs with where the broker reads, and says how
// to join them.
func TestCheckComparesTheTransactionLogSubjectForPoolsThatReadIt(t *testing.T) {
	pools := filepath.Join(t.TempDir(), "pools.json")
	if err := os.WriteFile(pools, []byte(`{"pools":[{"ingress":"/azure/","strategy":"headroom","routers":[{"path":"/azure/gpt4/"},{"path":"/azure/gpt35turbo/"}]}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	elsewhere := brokenGLConfig(t, func(m map[string]any) { m["service_bus"].(map[string]any)["topic_exact_logger"] = "gl.prod.logger" })
	for _, tc := range []struct {
		name   string
		getenv func(string) string
		advice string // "": none
	}{
		{"the same subject", env("BROKER_POOLS", pools, "BROKER_GL_CONFIG", repoGLConfigFile), ""},
		{"another subject", env("BROKER_POOLS", pools, "BROKER_GL_CONFIG", elsewhere),
			`advice: service_bus.topic_exact_logger: "gl.prod.logger", but the broker reads gecholog's transaction log on "coburn.gl.logger": run the broker with BROKER_LOGGER_SUBJECT=gl.prod.logger (-logger-subject); until then pools /azure/ (headroom) choose at random`},
		{"the broker told where", env("BROKER_POOLS", pools, "BROKER_GL_CONFIG", elsewhere, "BROKER_LOGGER_SUBJECT", "gl.prod.logger"), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			is := is.New(t)
			var out bytes.Buffer
			is.NoErr(run(t.Context(), []string{"check"}, tc.getenv, &out, &bytes.Buffer{})) // advice alone does not fail the check
			got := lines(out.String())
			if tc.advice == "" {
				is.Equal(len(got), 1) // the ok line alone
				return
			}
			is.Equal(len(got), 2)
			is.Equal(got[0], tc.advice)
		})
	}
}

func TestCheckOfAFileItCannotReadIsOneLine(t *testing.T) {
	dir := t.TempDir()
	notJSON := filepath.Join(dir, "not.json")
	if err := os.WriteFile(notJSON, []byte("{\n  \"routers\": [\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, path, want string
	}{
		{"a missing file", filepath.Join(dir, "absent.json"), "no such file or directory (give its path"},
		{"a file that is not JSON", notJSON, "not valid JSON: the file ends before the JSON is complete"},
		{"a directory", dir, "is a directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			is := is.New(t)
			var out, errOut bytes.Buffer
			err := run(t.Context(), []string{"check", tc.path}, env(), &out, &errOut)
			is.True(err != nil)                                          // the command fails
			saysFirst(t, "the error", err.Error(), "check "+tc.path+":") // the error names the file
			says(t, "the error", err.Error(), tc.want)                   // and what is wrong with it
			oneLine(t, err)                                              // in one line
			is.Equal(out.String(), "")                                   // no problems are listed
		})
	}
}

func TestCheckRefusesTwoFiles(t *testing.T) {
	is := is.New(t)
	err := run(t.Context(), []string{"check", repoGLConfigFile, repoGLConfigFile}, env(), &bytes.Buffer{}, &bytes.Buffer{})
	is.True(err != nil) // refused
	says(t, "the error", err.Error(), "one gl_config.json at a time")
}

func TestCheckHelpShowsTheSettings(t *testing.T) {
	is := is.New(t)
	var out bytes.Buffer
	is.NoErr(run(t.Context(), []string{"check", "-h"}, env(), &out, &bytes.Buffer{}))
	for _, want := range []string{"broker check [flags] [gl_config.json]", "BROKER_POOLS", "BROKER_SUBJECT", "BROKER_LOGGER_SUBJECT", "BROKER_GL_CONFIG"} {
		says(t, "the output", out.String(), want) // -h names the argument and each variable
	}
}

func TestServeRefusesToStartOnABrokenGLConfig(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(m map[string]any)
		want   string
	}{
		{"one problem", func(m map[string]any) { brokerEntry(m, "response")["async"] = false },
			": 1 problem: response.processors[0][0].async: set true"},
		{"several problems", threeDefects,
			`: 3 problems: routers: no router "/azure/dud/"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			is := is.New(t)
			path := brokenGLConfig(t, tc.mutate)
			// Nothing listens on port 1: a serve that got past the check
			// would log that it cannot connect, keep retrying until the
			// context ends, and then return nil.
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			var out, errOut bytes.Buffer
			err := run(ctx, []string{"-gl-config", path}, env("NATS_URL", "nats://127.0.0.1:1"), &out, &errOut)
			is.True(err != nil)                                               // serve refuses to start
			saysFirst(t, "the error", err.Error(), "gl-config "+path+tc.want) // naming the setting, the file and the first problem
			oneLine(t, err)                                                   // in one line
			is.Equal(errOut.String(), "")                                     // before it tried to connect: nothing logged
			is.Equal(out.String(), "")
		})
	}
}

func TestServeChecksTheGLConfigFromTheEnvironment(t *testing.T) {
	is := is.New(t)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	missing := filepath.Join(t.TempDir(), "gl_config.json")
	var errOut bytes.Buffer
	err := run(ctx, nil, env("BROKER_GL_CONFIG", missing, "NATS_URL", "nats://127.0.0.1:1"), &bytes.Buffer{}, &errOut)
	is.True(err != nil) // a gl_config.json that cannot be read stops startup
	is.Equal(err.Error(), "gl-config "+missing+": cannot read it: no such file or directory")
	is.Equal(errOut.String(), "") // before it tried to connect: nothing logged
}

func TestSeveralProblemsAtStartupPointToTheCheckCommand(t *testing.T) {
	is := is.New(t)
	path := brokenGLConfig(t, threeDefects)
	s, err := parseServe([]string{"-gl-config", path}, env())
	is.NoErr(err)
	err = ops.CheckAtStartup(s.glConfig, s.Pools, s.wiring(), nil)                 // what serve calls before it connects
	is.True(err != nil)                                                            // the problems stop the start
	saysLast(t, "the error", err.Error(), `(run "broker check `+path+`" for all)`) // the operator learns how to see the rest
}
