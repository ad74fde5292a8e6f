package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/testutil/natstest"
)

// The README's promise: a strategy is one file of broker/ and one line in
// its registry, and a pools file can then name it; a strategy that reads
// the transaction log says so in that line, and nothing else names it.
// This test takes the README's example, `heaviest`, as the README gives
// it, builds the broker with that file added and that line in
// broker/strategy.go, and the same line for "heaviest-log" saying it reads
// the log (a go build overlay: the tree is not touched), and runs itself
// again in that build, where the program serves a pools file that names
// the strategy and checks one that names the other.
func TestAStrategyIsOneFileAndOneLine(t *testing.T) {
	t.Parallel()
	if slices.Contains(broker.Strategies(), "heaviest") {
		poolsFileChoosesHeaviest(t)
		checkNamesThePoolsThatReadTheLog(t)
		return
	}
	if testing.Short() {
		t.Skip("builds the broker again with the README's strategy: not in -short")
	}
	is := is.New(t)
	readme, err := os.ReadFile("../../docs/strategies.md")
	is.NoErr(err)
	code, line := readmeStrategy(t, string(readme))
	is.True(strings.Contains(string(readme), "(`NeedsTransactionLog: true`)")) // docs/strategies.md says how a strategy declares it reads the log
	logLine := strings.Replace(line, `"heaviest"`, `"heaviest-log"`, 1)
	end := strings.LastIndex(logLine, "}")
	logLine = logLine[:end] + ", NeedsTransactionLog: true" + logLine[end:]

	registry, err := filepath.Abs("../../broker/strategy.go")
	is.NoErr(err)
	src, err := os.ReadFile(registry)
	is.NoErr(err)
	const open = "var strategies = map[string]registration{\n"
	is.True(strings.Count(string(src), open) == 1) // the registry the README names is in broker/strategy.go
	dir := t.TempDir()
	replace := map[string]string{
		registry: filepath.Join(dir, "strategy.go"),
		filepath.Join(filepath.Dir(registry), "heaviest.go"): filepath.Join(dir, "heaviest.go"),
	}
	is.NoErr(os.WriteFile(replace[registry], []byte(strings.Replace(string(src), open, open+"\t"+line+"\n\t"+logLine+"\n", 1)), 0o600))
	is.NoErr(os.WriteFile(filepath.Join(dir, "heaviest.go"), []byte(code), 0o600))
	overlay, err := json.Marshal(map[string]any{"Replace": replace})
	is.NoErr(err)
	is.NoErr(os.WriteFile(filepath.Join(dir, "overlay.json"), overlay, 0o600))

	args := []string{"test", "-overlay", filepath.Join(dir, "overlay.json"), "-count=1", "-v", "-run", "^" + t.Name() + "$"}
	if raceBuild() { // the same build as this one, whose packages are cached
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, ".")...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go %s with the README's heaviest.go and registry line %s: %v\n%s", strings.Join(args, " "), line, err, out)
	}
	t.Logf("%s", out)
}

// readmeStrategy returns the README's example strategy, the Go file under
// "Writing a strategy", and the line it says to add to the registry.
func readmeStrategy(t *testing.T, readme string) (code, line string) {
	t.Helper()
	_, section, ok := strings.Cut(readme, "**Writing a strategy.**")
	if !ok {
		t.Fatal(`README: no "**Writing a strategy.**" section`)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	m := regexp.MustCompile("(?s)```go\n(package broker\n.*?)```").FindStringSubmatch(section)
	if m == nil || !strings.Contains(m[1], "type heaviest ") {
		t.Fatal("README: no Go file of package broker declaring heaviest under Writing a strategy")
	}
	l := regexp.MustCompile("`(\"heaviest\": [^`\n]+)`").FindStringSubmatch(section)
	if l == nil {
		t.Fatal("README: no registry line `\"heaviest\": ...` under Writing a strategy")
	}
	return m[1], l[1]
}

// raceBuild reports whether this test binary was built with -race.
func raceBuild() bool {
	info, ok := debug.ReadBuildInfo()
	return ok && slices.ContainsFunc(info.Settings, func(s debug.BuildSetting) bool { return s.Key == "-race" && s.Value == "true" })
}

// poolsFileChoosesHeaviest runs in the build with the README's heaviest:
// the program, serving a pools file that names it, sends every call to
// the router with the most weight, and no pool of it needs the log.
func poolsFileChoosesHeaviest(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	pools := filepath.Join(t.TempDir(), "pools.json")
	is.NoErr(os.WriteFile(pools, []byte(`{"pools":[{"ingress":"/azure/","strategy":"heaviest","routers":[
		{"path":"/azure/light/"},{"path":"/azure/heavy/","weight":5},{"path":"/azure/mid/","weight":2}]}]}`), 0o600))
	startProgram(t, env("NATS_URL", s.ClientURL(), "BROKER_POOLS", pools))
	nc := natstest.Connect(t, s)
	awaitAnswer(t, nc, "/azure/")
	got := map[string]int{}
	for range 50 {
		m, err := nc.Request("coburn.gl.broker", []byte(`{"gl_path":"/azure/"}`), 2*time.Second)
		is.NoErr(err)
		var r struct {
			GLPath string `json:"gl_path"`
		}
		is.NoErr(json.Unmarshal(m.Data, &r))
		got[r.GLPath]++
	}
	is.Equal(got, map[string]int{"/azure/heavy/": 50}) // by weight at random, 50 in a row would be 1 in 10^10
}

// checkNamesThePoolsThatReadTheLog runs in the build with the README's
// heaviest and heaviest-log: `broker check` compares gecholog's logger
// subject with the broker's for a pool of the strategy whose line says it
// reads the log, and not for the other.
func checkNamesThePoolsThatReadTheLog(t *testing.T) {
	elsewhere := brokenGLConfig(t, func(m map[string]any) { m["service_bus"].(map[string]any)["topic_exact_logger"] = "gl.prod.logger" })
	for strategy, advice := range map[string]string{
		"heaviest": "", // none
		"heaviest-log": `advice: service_bus.topic_exact_logger: "gl.prod.logger", but the broker reads gecholog's transaction log on "coburn.gl.logger": ` +
			`run the broker with BROKER_LOGGER_SUBJECT=gl.prod.logger (-logger-subject); until then pools /azure/ (heaviest-log) choose at random`,
	} {
		is := is.New(t)
		pools := filepath.Join(t.TempDir(), "pools.json")
		is.NoErr(os.WriteFile(pools, []byte(`{"pools":[{"ingress":"/azure/","strategy":"`+strategy+`","routers":[{"path":"/azure/gpt4/"},{"path":"/azure/gpt35turbo/"}]}]}`), 0o600))
		var out bytes.Buffer
		is.NoErr(run(t.Context(), []string{"check"}, env("BROKER_POOLS", pools, "BROKER_GL_CONFIG", elsewhere), &out, &bytes.Buffer{})) // advice alone does not fail the check
		got := lines(out.String())
		if advice == "" {
			is.Equal(got[1:], []string{}) // the ok line alone, for a strategy whose line does not say it reads the log
			continue
		}
		is.Equal(len(got), 2)    // the advice, then the ok line
		is.Equal(got[0], advice) // names the pool and its strategy
	}
}
