package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matryer/is"
	"github.com/nats-io/nats.go"

	"github.com/gecholog/broker/internal/natstest"
)

// env makes a getenv from pairs, so tests never read the real environment.
func env(pairs ...string) func(string) string {
	m := map[string]string{}
	for i := 0; i+1 < len(pairs); i += 2 {
		m[pairs[i]] = pairs[i+1]
	}
	return func(k string) string { return m[k] }
}

// syncBuffer is a bytes.Buffer safe for the program's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// logLine finds the first JSON log line with msg and returns its fields.
func logLine(out, msg string) (map[string]any, bool) {
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil && m["msg"] == msg {
			return m, true
		}
	}
	return nil, false
}

func TestSettingsComeFromFlagsThenEnvironmentThenDefaults(t *testing.T) {
	for _, tc := range []struct {
		name   string
		args   []string
		getenv func(string) string
		check  func(is *is.I, c config)
	}{
		{"defaults are the original's", nil, env(), func(is *is.I, c config) {
			is.Equal(c.server, "nats://localhost:4222")
			is.Equal(c.subject, "coburn.gl.broker")
			is.Equal(c.disabledTime, 10*time.Minute)
			is.Equal(c.bucket, "gl_broker")
			is.Equal(c.kvReplicas, 1)
			is.Equal(len(c.pools), 1)
			is.Equal(c.pools[0].Ingress, "/azure/")
		}},
		{"GECHOLOG_HOST names the server", nil, env("GECHOLOG_HOST", "gecholog"), func(is *is.I, c config) {
			is.Equal(c.server, "nats://gecholog:4222")
		}},
		{"NATS_URL wins over GECHOLOG_HOST", nil, env("GECHOLOG_HOST", "gecholog", "NATS_URL", "nats://a:1,nats://b:2"), func(is *is.I, c config) {
			is.Equal(c.server, "nats://a:1,nats://b:2")
		}},
		{"DISABLED_TIME is fractional minutes", nil, env("DISABLED_TIME", "0.5"), func(is *is.I, c config) {
			is.Equal(c.disabledTime, 30*time.Second)
		}},
		{"a flag wins over its variable", []string{"-disabled-time", "2", "-bucket", "b2"}, env("DISABLED_TIME", "0.5", "BROKER_BUCKET", "b1"), func(is *is.I, c config) {
			is.Equal(c.disabledTime, 2*time.Minute)
			is.Equal(c.bucket, "b2")
		}},
		{"NATS connection settings as NATS tools name them", nil, env("NATS_TOKEN", "t", "NATS_CREDS", "/c", "NATS_NKEY", "/n", "NATS_CERT", "/cert", "NATS_KEY", "/key", "NATS_CA", "/ca"), func(is *is.I, c config) {
			is.Equal(c.token, "t")
			is.Equal(c.creds, "/c")
			is.Equal(c.nkey, "/n")
			is.Equal([]string{c.tlsCert, c.tlsKey, c.tlsCA}, []string{"/cert", "/key", "/ca"})
		}},
		{"user and password", []string{"-user", "u"}, env("NATS_PASSWORD", "p"), func(is *is.I, c config) {
			is.Equal(c.user, "u")
			is.Equal(c.password, "p")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			is := is.New(t)
			c, err := parseServe(tc.args, tc.getenv, io.Discard)
			is.NoErr(err)
			tc.check(is, c)
		})
	}
}

func TestPoolsFileSetsPoolsAndWeights(t *testing.T) {
	is := is.New(t)
	f := filepath.Join(t.TempDir(), "pools.json")
	is.NoErr(os.WriteFile(f, []byte(`{"pools":[
		{"ingress":"/azure/","routers":[{"path":"/azure/gpt4/","weight":3},{"path":"/azure/gpt35turbo/"}]},
		{"ingress":"/openai/","routers":[{"path":"/openai/a/"}]}]}`), 0o600))
	c, err := parseServe([]string{"-pools", f}, env(), io.Discard)
	is.NoErr(err)
	is.Equal(len(c.pools), 2)
	is.Equal(c.pools[0].Routers[0].Weight, 3)
	is.Equal(c.pools[0].Routers[1].Weight, 1) // absent weight means 1
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
		{"DISABLED_TIME zero", "DISABLED_TIME", nil, env("DISABLED_TIME", "0")},
		{"DISABLED_TIME negative", "DISABLED_TIME", nil, env("DISABLED_TIME", "-1")},
		{"DISABLED_TIME NaN", "DISABLED_TIME", nil, env("DISABLED_TIME", "NaN")},
		{"DISABLED_TIME infinite", "DISABLED_TIME", nil, env("DISABLED_TIME", "Inf")},
		{"DISABLED_TIME under a second", "DISABLED_TIME", nil, env("DISABLED_TIME", "0.001")},
		{"disabled-time flag", "disabled-time", []string{"-disabled-time", "x"}, env()},
		{"kv replicas zero", "BROKER_KV_REPLICAS", nil, env("BROKER_KV_REPLICAS", "0")},
		{"kv replicas too many", "kv-replicas", []string{"-kv-replicas", "9"}, env()},
		{"bucket with a dot", "bucket", nil, env("BROKER_BUCKET", "a.b")},
		{"subject with a space", "subject", nil, env("BROKER_SUBJECT", "coburn gl")},
		{"queue with a dot", "queue", []string{"-queue", "a.b"}, env()},
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
	c, err := parseServe(nil, env("NATS_CREDS", filepath.Join(t.TempDir(), "missing.creds")), io.Discard)
	is.NoErr(err)
	_, err = natsOptions(c, nil)
	is.True(err != nil && strings.HasPrefix(err.Error(), "creds:")) // names the setting
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
	is.True(err != nil && strings.Contains(err.Error(), `"serv"`))
}

func TestServeAnswersThenStopsCleanlyWhenCancelled(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	var logs syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, nil, env("NATS_URL", s.ClientURL(), "BROKER_LOG_FORMAT", "json"), io.Discard, &logs)
	}()
	nc := natstest.Connect(t, s)
	natstest.Eventually(t, 10*time.Second, func() bool { _, ok := logLine(logs.String(), "serving"); return ok }, "replica serving")
	serving, _ := logLine(logs.String(), "serving")
	is.Equal(serving["ttl_mode"], "ttl")

	m, err := nc.Request("coburn.gl.broker", []byte(`{"gl_path":"/azure/"}`), 2*time.Second)
	is.NoErr(err)
	is.True(bytes.HasPrefix(m.Data, []byte(`{"gl_path":"/azure/`))) // a pool router

	cancel()
	select {
	case err := <-done:
		is.NoErr(err) // a signal is a clean stop
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not stop within 10s of cancellation")
	}
	_, stopped := logLine(logs.String(), "stopped")
	is.True(stopped)
}

func TestEmbeddedNATSServesWithTheGatewaysToken(t *testing.T) {
	is := is.New(t)
	ctx, cancel := context.WithCancel(context.Background())
	var logs syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--embedded-nats", "--embedded-listen", "127.0.0.1:0", "--embedded-store", t.TempDir()},
			env("NATS_TOKEN", "tok", "BROKER_LOG_FORMAT", "json"), io.Discard, &logs)
	}()
	defer func() { cancel(); <-done }()
	natstest.Eventually(t, 10*time.Second, func() bool { _, ok := logLine(logs.String(), "serving"); return ok }, "replica serving")
	started, ok := logLine(logs.String(), "embedded nats-server with JetStream started")
	is.True(ok)
	addr := "nats://" + started["listen"].(string)

	_, err := nats.Connect(addr)
	is.True(errors.Is(err, nats.ErrAuthorization)) // the token is required
	nc, err := nats.Connect(addr, nats.Token("tok"))
	is.NoErr(err)
	defer nc.Close()
	m, err := nc.Request("coburn.gl.broker", []byte(`{"gl_path":"/azure/"}`), 2*time.Second)
	is.NoErr(err)
	is.True(bytes.HasPrefix(m.Data, []byte(`{"gl_path":"/azure/`)))
	is.True(!strings.Contains(logs.String(), "tok\"")) // the token is never logged
}

func TestServeWaitsForTheServerAndStopsWhenCancelled(t *testing.T) {
	is := is.New(t)
	ctx, cancel := context.WithCancel(context.Background())
	var logs syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, nil, env("NATS_URL", "nats://secret-token@127.0.0.1:1", "BROKER_LOG_FORMAT", "json"), io.Discard, &logs)
	}()
	natstest.Eventually(t, 5*time.Second, func() bool {
		_, ok := logLine(logs.String(), "cannot connect to NATS; retrying every second")
		return ok
	}, "one clear line about the unreachable server")
	cancel()
	select {
	case err := <-done:
		is.NoErr(err)
	case <-time.After(5 * time.Second):
		t.Fatal("did not stop within 5s of cancellation")
	}
	is.True(!strings.Contains(logs.String(), "secret-token")) // credentials in the URL are redacted
}

func TestDemoRunsToCompletion(t *testing.T) {
	is := is.New(t)
	var out, errs syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	is.NoErr(run(ctx, []string{"demo", "-requests", "20"}, env(), &out, &errs))
	text := out.String()
	failed := strings.Index(text, "randomly selects /azure/dud/ 502 failed. Disabled for 10 minutes")
	is.True(failed > 0)                                                           // the dud fails once
	is.True(!strings.Contains(text[failed+10:], "randomly selects /azure/dud/"))  // and is never chosen again
	is.True(strings.Contains(text, "# both replicas dropped /azure/dud/ within")) // by either replica
	is.True(strings.Contains(text, "$ nats kv ls gl_broker\n/azure/dud/\n"))      // the bucket lists it
	is.True(strings.Contains(errs.String(), "replica=replica-2"))                 // the second replica logged the disable
}
