package ops_test

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/gecholog"
	"github.com/gecholog/broker/ops"
)

// originalGLConfig is the original broker's own gl_config.json; see
// gecholog/glconfig_test.go for where it comes from. Its response processor
// lacks inbound_headers, and nothing else.
const originalGLConfig = "../gecholog/testdata/original_gl_config.json"

const subject = "coburn.gl.broker"

// originalWithoutModifier writes the original's gl_config.json with its
// request processor no modifier, an error, and returns its path.
func originalWithoutModifier(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(originalGLConfig)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	layers := m["request"].(map[string]any)["processors"].([]any)
	layers[0].([]any)[0].(map[string]any)["modifier"] = false
	if b, err = json.Marshal(m); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "gl_config.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// printed is the lines written to s. When the test fails, they are shown.
func printed(t *testing.T, s string) []string {
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("printed:\n%s", s)
		}
	})
	return strings.Split(strings.TrimRight(s, "\n"), "\n")
}

func TestCheckPassesTheOriginalsGLConfigWithOneAdvice(t *testing.T) {
	is := is.New(t)
	var out bytes.Buffer
	is.NoErr(ops.Check(originalGLConfig, broker.DefaultPools(), gecholog.Wiring{Subject: subject}, &out)) // advice alone does not fail the check
	got := printed(t, out.String())
	is.Equal(len(got), 2) // the advice, then the ok line

	is.True(strings.HasPrefix(got[0], `advice: response.processors[0][0].input_fields_include: add "inbound_headers"`)) // the advice names the field and what to add
	is.Equal(got[1], originalGLConfig+": ok (1 pool, 3 routers, subject coburn.gl.broker)")
}

func TestCheckFailsOnAnErrorAndListsItBeforeTheAdvice(t *testing.T) {
	is := is.New(t)
	path := originalWithoutModifier(t)
	var out bytes.Buffer
	err := ops.Check(path, broker.DefaultPools(), gecholog.Wiring{Subject: subject}, &out)
	is.True(err != nil)                                // an error fails the check
	is.Equal(err.Error(), "check: 1 problem in "+path) // counting the errors, not the advice
	got := printed(t, out.String())
	is.Equal(len(got), 2) // no ok line

	is.True(strings.HasPrefix(got[0], "request.processors[0][0].modifier: set true"))            // the error first
	is.True(strings.HasPrefix(got[1], "advice: response.processors[0][0].input_fields_include")) // then the advice
}

func TestCheckAtStartupLogsEachAdviceOnceAsAWarning(t *testing.T) {
	is := is.New(t)
	var logs bytes.Buffer
	err := ops.CheckAtStartup(originalGLConfig, broker.DefaultPools(), gecholog.Wiring{Subject: subject}, slog.New(slog.NewJSONHandler(&logs, nil)))
	is.NoErr(err) // the original's file does not stop the start
	got := printed(t, logs.String())
	is.Equal(len(got), 1) // one line for the one piece of advice
	var line map[string]any
	is.NoErr(json.Unmarshal([]byte(got[0]), &line))
	is.Equal(line["level"], "WARN")
	is.Equal(line["msg"], "gl-config advice")
	is.Equal(line["gl_config"], originalGLConfig)
	is.Equal(line["field"], "response.processors[0][0].input_fields_include")
	is.True(strings.HasPrefix(line["advice"].(string), `add "inbound_headers"`)) // the field to add
}

func TestCheckAtStartupRefusesOnAnError(t *testing.T) {
	is := is.New(t)
	path := originalWithoutModifier(t)
	err := ops.CheckAtStartup(path, broker.DefaultPools(), gecholog.Wiring{Subject: subject}, nil)
	is.True(err != nil)                                                                                                                                                                                                             // an error stops the start
	is.Equal(err.Error(), "gl-config "+path+": 1 problem: request.processors[0][0].modifier: set true: gl_path is already in the transaction and gecholog lets only a modifier replace a field, so the broker's choice is dropped") // the advice is not counted
}
