package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/replica"
)

// TestMain fails the package when a test leaves a goroutine running: every
// goroutine the program starts has an owner that stops it and waits for
// it before run returns.
//
// natstest.LeakOptions lets go what nats-server leaves running.
//
// Most tests here wait on servers, replicas and timers rather than the CPU
// (a run takes ~20 s of CPU in ~2.5 minutes), so up to 8 parallel tests wait
// at once, unless -parallel is given. Fuzzing keeps its default: there
// -parallel is the number of fuzz workers.
func TestMain(m *testing.M) {
	flag.Parse()
	given := false
	flag.Visit(func(f *flag.Flag) { given = given || f.Name == "test.parallel" })
	if fuzz := flag.Lookup("test.fuzz"); !given && (fuzz == nil || fuzz.Value.String() == "") {
		_ = flag.Set("test.parallel", strconv.Itoa(max(8, runtime.GOMAXPROCS(0))))
	}
	goleak.VerifyTestMain(m, natstest.LeakOptions()...)
}

// parseServe reads the serve command's settings from args and getenv, as
// serve does before it starts the replica.
func parseServe(args []string, getenv func(string) string) (*settings, error) {
	s := newSettings("serve", getenv)
	s.serving()
	err := s.parse(args, "", io.Discard)
	return s, err
}

// env makes a getenv from pairs, so tests never read the real environment.
func env(pairs ...string) func(string) string {
	m := map[string]string{}
	for i := 0; i+1 < len(pairs); i += 2 {
		m[pairs[i]] = pairs[i+1]
	}
	return func(k string) string { return m[k] }
}

// syncBuffer is a buffer safe for the goroutines that write to it.
type syncBuffer = natstest.Buffer

// logLine finds the first JSON log line with msg and returns its fields.
func logLine(out, msg string) (map[string]any, bool) {
	m := logged(out, msg)
	return m, m != nil
}

// program is the whole program run in-process, as one processor replica
// would run, with everything it prints captured.
type program struct {
	logs, out syncBuffer // stderr (the JSON log) and stdout
	cancel    context.CancelFunc
	done      chan error
}

// startProgram runs the program with args and getenv, logging JSON, until
// stop or the end of the test; when the test fails, the log is shown.
func startProgram(t *testing.T, getenv func(string) string, args ...string) *program {
	t.Helper()
	p := &program{done: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	withJSON := func(k string) string {
		if k == "BROKER_LOG_FORMAT" {
			return "json"
		}
		return getenv(k)
	}
	go func() { p.done <- run(ctx, args, withJSON, &p.out, &p.logs) }()
	t.Cleanup(func() {
		// What run returned is the test's to check; one still running is
		// a leak.
		if err := p.stop(); errors.Is(err, errStillRunning) {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("the program logged:\n%s", &p.logs)
		}
	})
	return p
}

// await waits up to 10 s for a log line with msg whose attributes include
// attrs (name, value pairs) and returns it.
func (p *program) await(t *testing.T, msg string, attrs ...string) map[string]any {
	t.Helper()
	return p.awaitWithin(t, 10*time.Second, msg, attrs...)
}

// awaitWithin waits up to d for a log line as await does.
func (p *program) awaitWithin(t *testing.T, d time.Duration, msg string, attrs ...string) map[string]any {
	t.Helper()
	var line map[string]any
	natstest.Eventually(t, d, func() bool {
		line = logged(p.logs.String(), msg, attrs...)
		return line != nil
	}, "log line %q %v", msg, attrs)
	return line
}

// stop cancels the program and returns what run returned, waiting up to
// 15 s for it.
func (p *program) stop() error { return p.stopWithin(15 * time.Second) }

// stopWithin cancels the program and returns what run returned, or an
// error when run has not returned within d. It may be called again.
func (p *program) stopWithin(d time.Duration) error {
	p.cancel()
	select {
	case err := <-p.done:
		p.done <- err // for the next call, such as the cleanup's
		return err
	case <-time.After(d):
		return fmt.Errorf("%w %v after its cancellation", errStillRunning, d)
	}
}

var errStillRunning = errors.New("the program was still running")

// logged finds the first JSON log line with msg and attrs (name, value
// pairs) in out.
func logged(out, msg string, attrs ...string) map[string]any {
	for line := range strings.Lines(out) {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil || m["msg"] != msg {
			continue
		}
		match := true
		for i := 0; i+1 < len(attrs); i += 2 {
			match = match && fmt.Sprint(m[attrs[i]]) == attrs[i+1]
		}
		if match {
			return m
		}
	}
	return nil
}

func TestSettingsComeFromFlagsThenEnvironmentThenDefaults(t *testing.T) {
	for _, tc := range []struct {
		name   string
		args   []string
		getenv func(string) string
		check  func(is *is.I, s *settings)
	}{
		{"defaults are the original's", nil, env(), func(is *is.I, s *settings) {
			is.Equal(s.NATS.Servers, "nats://localhost:4222")
			is.Equal(s.Subject, "coburn.gl.broker")
			is.Equal(s.Policy.DisabledTime, 10*time.Minute)
			is.Equal(s.Bucket, "gl_broker")
			is.Equal(s.KVReplicas, 1)
			is.Equal(len(s.Pools), 1)
			is.Equal(s.Pools[0].Ingress, "/azure/")
		}},
		{"GECHOLOG_HOST names the server", nil, env("GECHOLOG_HOST", "gecholog"), func(is *is.I, s *settings) {
			is.Equal(s.NATS.Servers, "nats://gecholog:4222")
		}},
		{"NATS_URL wins over GECHOLOG_HOST", nil, env("GECHOLOG_HOST", "gecholog", "NATS_URL", "nats://a:1,nats://b:2"), func(is *is.I, s *settings) {
			is.Equal(s.NATS.Servers, "nats://a:1,nats://b:2")
		}},
		{"DISABLED_TIME is fractional minutes", nil, env("DISABLED_TIME", "0.5"), func(is *is.I, s *settings) {
			is.Equal(s.Policy.DisabledTime, 30*time.Second)
		}},
		{"DISABLED_TIME 0.005 is 0.3 s, exactly", nil, env("DISABLED_TIME", "0.005"), func(is *is.I, s *settings) {
			is.Equal(s.Policy.DisabledTime, 300*time.Millisecond)
			is.True(!s.Policy.NeverDisable) // failover on
		}},
		{"DISABLED_TIME 0: a failure never takes a router out", nil, env("DISABLED_TIME", "0"), func(is *is.I, s *settings) {
			is.True(s.Policy.NeverDisable) // 0 turns failover off
		}},
		{"DISABLED_TIME 0.001 is the shortest, 60 ms", nil, env("DISABLED_TIME", "0.001"), func(is *is.I, s *settings) {
			is.Equal(s.Policy.DisabledTime, 60*time.Millisecond)
			is.True(!s.Policy.NeverDisable) // failover on
		}},
		{"failure rate rule off by default", nil, env(), func(is *is.I, s *settings) {
			is.Equal(s.Policy.Rate, 0.0)
			is.Equal(s.Policy.RateWindow, time.Minute)
			is.Equal(s.Policy.RateMinCalls, 20)
			is.Equal(s.Policy.FailureCodes.String(), "5xx,429,408,401,403,404")
		}},
		{"failure rate rule from the environment", nil, env("BROKER_FAILURE_RATE", "20", "BROKER_FAILURE_RATE_WINDOW", "30s", "BROKER_FAILURE_RATE_MIN_CALLS", "50"), func(is *is.I, s *settings) {
			is.Equal(s.Policy.Rate, 20.0)
			is.Equal(s.Policy.RateWindow, 30*time.Second)
			is.Equal(s.Policy.RateMinCalls, 50)
		}},
		{"failure codes by code and class", []string{"-failure-codes", "5xx, 429"}, env(), func(is *is.I, s *settings) {
			is.True(s.Policy.FailureCodes.Has(503))  // 5xx counts
			is.True(s.Policy.FailureCodes.Has(429))  // 429 counts
			is.True(!s.Policy.FailureCodes.Has(404)) // 404 left out
		}},
		{"drain timeout by default", nil, env(), func(is *is.I, s *settings) {
			is.Equal(s.replicaConfig(nil).DrainTimeout, replica.DefaultDrainTimeout)
		}},
		{"drain timeout from the environment, as an orchestrator's grace period allows", nil, env("BROKER_DRAIN_TIMEOUT", "45s"), func(is *is.I, s *settings) {
			is.Equal(s.replicaConfig(nil).DrainTimeout, 45*time.Second) // the replica drains for it
		}},
		{"a flag wins over its variable", []string{"-disabled-time", "2", "-bucket", "b2"}, env("DISABLED_TIME", "0.5", "BROKER_BUCKET", "b1"), func(is *is.I, s *settings) {
			is.Equal(s.Policy.DisabledTime, 2*time.Minute)
			is.Equal(s.Bucket, "b2")
		}},
		{"NATS connection settings as NATS tools name them", nil, env("NATS_TOKEN", "t", "NATS_CREDS", "/c", "NATS_NKEY", "/n", "NATS_CERT", "/cert", "NATS_KEY", "/key", "NATS_CA", "/ca"), func(is *is.I, s *settings) {
			is.Equal(s.NATS.Token, "t")
			is.Equal(s.NATS.Creds, "/c")
			is.Equal(s.NATS.NKey, "/n")
			is.Equal([]string{s.NATS.TLSCert, s.NATS.TLSKey, s.NATS.TLSCA}, []string{"/cert", "/key", "/ca"})
		}},
		{"user and password", []string{"-user", "u"}, env("NATS_PASSWORD", "p"), func(is *is.I, s *settings) {
			is.Equal(s.NATS.User, "u")
			is.Equal(s.NATS.Password, "p")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			is := is.New(t)
			s, err := parseServe(tc.args, tc.getenv)
			is.NoErr(err)
			tc.check(is, s)
		})
	}
}

func TestPoolsFileSetsPoolsAndWeights(t *testing.T) {
	is := is.New(t)
	f := filepath.Join(t.TempDir(), "pools.json")
	is.NoErr(os.WriteFile(f, []byte(`{"pools":[
		{"ingress":"/azure/","routers":[{"path":"/azure/gpt4/","weight":3},{"path":"/azure/gpt35turbo/"}]},
		{"ingress":"/openai/","routers":[{"path":"/openai/a/"}]}]}`), 0o600))
	s, err := parseServe([]string{"-pools", f}, env())
	is.NoErr(err)
	is.Equal(len(s.Pools), 2)
	is.Equal(s.Pools[0].Routers[0].Weight, 3)
	is.Equal(s.Pools[0].Routers[1].Weight, 1) // absent weight means 1
}

func TestBadSettingStopsStartupWithOneLineNamingIt(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	big := write("big.json", `{"pools":[]}`+strings.Repeat(" ", 2<<20))
	for _, tc := range []struct {
		name, names string
		args        []string
		getenv      func(string) string
	}{
		{"DISABLED_TIME not a number", "DISABLED_TIME", nil, env("DISABLED_TIME", "ten")},
		{"DISABLED_TIME negative", "DISABLED_TIME", nil, env("DISABLED_TIME", "-1")},
		{"DISABLED_TIME NaN", "DISABLED_TIME", nil, env("DISABLED_TIME", "NaN")},
		{"DISABLED_TIME infinite", "DISABLED_TIME", nil, env("DISABLED_TIME", "Inf")},
		{"DISABLED_TIME empty", "disabled-time", []string{"-disabled-time", ""}, env()},
		{"DISABLED_TIME rounding to nothing", "DISABLED_TIME", nil, env("DISABLED_TIME", "1e-12")},
		{"DISABLED_TIME of microseconds", "DISABLED_TIME", nil, env("DISABLED_TIME", "0.0000001")},
		{"DISABLED_TIME just below the shortest", "disabled-time", []string{"-disabled-time", "0.00099"}, env()},
		{"failure rate over 100", "failure-rate", []string{"-failure-rate", "101"}, env()},
		{"failure rate negative", "BROKER_FAILURE_RATE", nil, env("BROKER_FAILURE_RATE", "-5")},
		{"failure rate NaN", "BROKER_FAILURE_RATE", nil, env("BROKER_FAILURE_RATE", "NaN")},
		{"failure rate window zero", "failure-rate-window", []string{"-failure-rate-window", "0s"}, env()},
		{"failure rate min calls zero", "BROKER_FAILURE_RATE_MIN_CALLS", nil, env("BROKER_FAILURE_RATE_MIN_CALLS", "0")},
		{"failure codes class out of range", "failure-codes", []string{"-failure-codes", "6xx"}, env()},
		{"failure codes junk", "BROKER_FAILURE_CODES", nil, env("BROKER_FAILURE_CODES", "5xx,oops")},
		{"failure codes empty item", "BROKER_FAILURE_CODES", nil, env("BROKER_FAILURE_CODES", "5xx,,429")},
		{"failure codes status out of range", "BROKER_FAILURE_CODES", nil, env("BROKER_FAILURE_CODES", "999")},
		{"disabled-time flag", "disabled-time", []string{"-disabled-time", "x"}, env()},
		{"drain timeout zero", "BROKER_DRAIN_TIMEOUT", nil, env("BROKER_DRAIN_TIMEOUT", "0s")},
		{"drain timeout negative", "BROKER_DRAIN_TIMEOUT", nil, env("BROKER_DRAIN_TIMEOUT", "-5s")},
		{"drain timeout without a unit", "BROKER_DRAIN_TIMEOUT", nil, env("BROKER_DRAIN_TIMEOUT", "30")},
		{"drain timeout over ten minutes", "drain-timeout", []string{"-drain-timeout", "11m"}, env()},
		{"kv replicas zero", "BROKER_KV_REPLICAS", nil, env("BROKER_KV_REPLICAS", "0")},
		{"kv replicas too many", "kv-replicas", []string{"-kv-replicas", "9"}, env()},
		{"bucket with a dot", "bucket", nil, env("BROKER_BUCKET", "a.b")},
		{"subject with a space", "subject", nil, env("BROKER_SUBJECT", "coburn gl")},
		{"queue with a dot", "queue", []string{"-queue", "a.b"}, env()},
		{"id too long", "BROKER_ID", nil, env("BROKER_ID", strings.Repeat("r", 257))},
		{"log level", "log-level", nil, env("BROKER_LOG_LEVEL", "loud")},
		{"log format", "log-format", nil, env("BROKER_LOG_FORMAT", "xml")},
		{"boolean", "BROKER_EMBEDDED_NATS", nil, env("BROKER_EMBEDDED_NATS", "maybe")},
		{"certificate without key", "tlscert", nil, env("NATS_CERT", "/c")},
		{"token and user", "token", nil, env("NATS_TOKEN", "t", "NATS_USER", "u")},
		{"pools file missing", "pools", []string{"-pools", filepath.Join(dir, "none.json")}, env()},
		{"pools file not JSON", "pools", []string{"-pools", write("bad.json", "{")}, env()},
		{"pools file wrong type", "pools", []string{"-pools", write("type.json", `{"pools":{"ingress":"/a/"}}`)}, env()},
		{"pools file unknown field", "pools", []string{"-pools", write("field.json", `{"pool":[]}`)}, env()},
		{"pools file empty", "pools", []string{"-pools", write("empty.json", `{"pools":[]}`)}, env()},
		{"pools file bad path", "pools", []string{"-pools", write("path.json", `{"pools":[{"ingress":"/a/","routers":[{"path":"a"}]}]}`)}, env()},
		{"pools file bad weight", "pools", []string{"-pools", write("w.json", `{"pools":[{"ingress":"/a/","routers":[{"path":"/a/b/","weight":-2}]}]}`)}, env()},
		{"pools file too big", "pools", []string{"-pools", big}, env()},
		{"unknown flag", "-nope", []string{"-nope"}, env()},
		{"stray argument", "stray", []string{"-bucket", "b", "stray"}, env()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			is := is.New(t)
			err := run(context.Background(), tc.args, tc.getenv, io.Discard, io.Discard)
			is.True(err != nil)                              // startup refused
			is.True(strings.Contains(err.Error(), tc.names)) // the line names the setting
			is.True(!strings.Contains(err.Error(), "\n"))    // one line
		})
	}
}

func TestMissingCredentialFileStopsStartupNamingTheSetting(t *testing.T) {
	is := is.New(t)
	getenv := env("NATS_CREDS", filepath.Join(t.TempDir(), "missing.creds"), "NATS_URL", "nats://127.0.0.1:1")
	s, err := parseServe(nil, getenv)
	is.NoErr(err) // the file is checked when connecting, not when parsing
	_, err = s.NATS.Options()
	is.True(err != nil && strings.HasPrefix(err.Error(), "creds:")) // names the setting
	// Nothing listens on port 1: a serve that got past the check would
	// log that it cannot connect, keep retrying until the context ends,
	// and then return nil.
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	var logs bytes.Buffer
	err = run(ctx, nil, getenv, io.Discard, &logs)
	is.True(err != nil && strings.HasPrefix(err.Error(), "creds:")) // startup stops, naming the setting
	is.Equal(logs.String(), "")                                     // before it tried to connect: nothing logged
}

func TestHelpPrintsEverySettingAndNoSecret(t *testing.T) {
	is := is.New(t)
	var out bytes.Buffer
	is.NoErr(run(context.Background(), []string{"-h"}, env("NATS_TOKEN", "s3cr3t", "NATS_PASSWORD", "pa55"), &out, io.Discard))
	for _, v := range []string{"NATS_URL", "GECHOLOG_HOST", "NATS_TOKEN", "DISABLED_TIME", "NATS_CREDS", "NATS_NKEY", "NATS_CA", "BROKER_POOLS"} {
		is.True(strings.Contains(out.String(), v)) // the usage names each variable
	}
	is.True(!strings.Contains(out.String(), "s3cr3t")) // no token
	is.True(!strings.Contains(out.String(), "pa55"))   // no password
}

func TestUnknownCommandIsRefused(t *testing.T) {
	is := is.New(t)
	err := run(context.Background(), []string{"serv"}, env(), io.Discard, io.Discard)
	is.True(err != nil && strings.Contains(err.Error(), `"serv"`)) // the unknown command is named
}

func TestServeAnswersThenStopsCleanlyWhenCancelled(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	p := startProgram(t, env("NATS_URL", s.ClientURL()))
	nc := natstest.Connect(t, s)
	serving := p.await(t, "serving")
	is.Equal(serving["ttl_mode"], "ttl")

	m, err := nc.Request("coburn.gl.broker", []byte(`{"gl_path":"/azure/"}`), 2*time.Second)
	is.NoErr(err)
	is.True(bytes.HasPrefix(m.Data, []byte(`{"gl_path":"/azure/`))) // a pool router

	is.NoErr(p.stopWithin(10 * time.Second)) // a signal is a clean stop
	_, stopped := logLine(p.logs.String(), "stopped")
	is.True(stopped) // the program stopped when its context ended
}

func TestEmbeddedNATSServesWithTheGatewaysToken(t *testing.T) {
	is := is.New(t)
	const token = "tok-S3CR3T-f26b"
	p := startProgram(t, env("NATS_TOKEN", token),
		"--embedded-nats", "--embedded-listen", "127.0.0.1:0", "--embedded-store", t.TempDir())
	p.await(t, "serving")
	started, ok := logLine(p.logs.String(), "embedded nats-server with JetStream started")
	is.True(ok) // the line was logged
	addr := "nats://" + started["listen"].(string)

	_, err := nats.Connect(addr)
	is.True(errors.Is(err, nats.ErrAuthorization)) // the token is required
	nc, err := nats.Connect(addr, nats.Token(token))
	is.NoErr(err)
	defer nc.Close()
	m, err := nc.Request("coburn.gl.broker", []byte(`{"gl_path":"/azure/"}`), 2*time.Second)
	is.NoErr(err)
	is.True(bytes.HasPrefix(m.Data, []byte(`{"gl_path":"/azure/`)))   // a router of the pool is chosen
	is.True(!strings.Contains(p.logs.String()+p.out.String(), token)) // the token is never printed
}

func TestServeWaitsForTheServerAndStopsWhenCancelled(t *testing.T) {
	is := is.New(t)
	p := startProgram(t, env("NATS_URL", "nats://secret-token@127.0.0.1:1"))
	p.awaitWithin(t, 5*time.Second, "cannot connect to NATS; retrying every second") // one clear line about the unreachable server
	is.NoErr(p.stopWithin(5 * time.Second))
	is.True(!strings.Contains(p.logs.String(), "secret-token")) // credentials in the URL are redacted
}

func TestDemoRunsToCompletion(t *testing.T) {
	t.Parallel()
	is := is.New(t)
	var out, errs syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	is.NoErr(run(ctx, []string{"demo", "-requests", "20"}, env(), &out, &errs))
	text := out.String()
	failed := strings.Index(text, "randomly selects /azure/dud/ 502 failed. Disabled for 10 minutes")
	is.True(failed > 0)                                                           // the dud fails once
	is.True(!strings.Contains(text[failed+10:], "randomly selects /azure/dud/"))  // and is never chosen again
	is.True(strings.Contains(text, "# both replicas dropped /azure/dud/ within")) // the demo says so
	is.True(strings.Contains(text, "$ nats kv ls gl_broker\n/azure/dud/\n"))      // the bucket lists it
	for _, id := range []string{"replica-1", "replica-2"} {
		found := false
		for line := range strings.Lines(errs.String()) {
			found = found || (strings.Contains(line, `msg="router disabled"`) && strings.Contains(line, " replica="+id+" ") && strings.Contains(line, " router=/azure/dud/ "))
		}
		is.True(found) // and each replica logged the disable: both did drop it
	}
}
