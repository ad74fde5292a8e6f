package main

// The fuzz target behind "a secret is never printed": generated user
// names, passwords and tokens of any bytes, given every way the broker
// takes them, and everything the program prints on every path, to a
// server that lets any credentials in and to one that is not there.

import (
	"bufio"
	"context"
	"encoding/json"
	"html"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/testutil/natstest"
)

// anyCredentials lets every client in, so that the broker connects with
// whatever credentials it was given and prints what it prints when
// serving.
type anyCredentials struct{}

func (anyCredentials) Check(server.ClientAuthentication) bool { return true }

// unreachable is a server address nothing listens on.
const unreachable = "127.0.0.1:1"

// fuzzCase is one way of giving the broker generated secrets.
type fuzzCase struct {
	env     []string                 // NATS_URL is added for the host
	url     func(host string) string // NATS_URL; nil: nats://host
	args    []string                 // flags every command gets
	secrets []string
}

// fuzzModes is how many ways fuzzCaseOf gives the secrets.
const fuzzModes = 10

// fuzzCaseOf gives user, password and token to the broker the way mode
// says: in the URL as typed or percent-encoded, as NATS_TOKEN, NATS_USER
// and NATS_PASSWORD, as flags, or inside a credentials or nkey file.
func fuzzCaseOf(t *testing.T, mode uint8, user, password, token string) fuzzCase {
	switch mode % fuzzModes {
	case 0:
		return fuzzCase{url: func(h string) string { return "nats://" + user + ":" + password + "@" + h }, secrets: []string{user, password}}
	case 1:
		return fuzzCase{url: func(h string) string { return "nats://" + token + "@" + h }, secrets: []string{token}}
	case 2:
		return fuzzCase{url: func(h string) string { return "nats://" + url.UserPassword(user, password).String() + "@" + h }, secrets: []string{user, password}}
	case 3:
		return fuzzCase{url: func(h string) string { return "nats://" + url.User(token).String() + "@" + h }, secrets: []string{token}}
	case 4:
		return fuzzCase{env: []string{"NATS_TOKEN", token}, secrets: []string{token}}
	case 5:
		return fuzzCase{env: []string{"NATS_USER", user, "NATS_PASSWORD", password}, secrets: []string{user, password}}
	case 6:
		return fuzzCase{args: []string{"--user", user, "--password", password}, secrets: []string{user, password}}
	case 7:
		creds := "-----BEGIN NATS USER JWT-----\n" + token + "\n------END NATS USER JWT------\n\n" +
			"-----BEGIN USER NKEY SEED-----\n" + password + "\n------END USER NKEY SEED------\n"
		return fuzzCase{env: []string{"NATS_CREDS", writeFile(t, "user.creds", []byte(creds))}, secrets: []string{token, password}}
	case 8:
		return fuzzCase{env: []string{"NATS_NKEY", writeFile(t, "user.nk", []byte(token))}, secrets: []string{token}}
	default: // a list, the first server away
		return fuzzCase{url: func(h string) string {
			return "nats://" + user + ":" + password + "@" + unreachable + ",nats://" + token + "@" + h
		}, secrets: []string{user, password, token}}
	}
}

// getenv is the case's environment for a server at host, and more.
func (c fuzzCase) getenv(host string, more ...string) func(string) string {
	u := "nats://" + host
	if c.url != nil {
		u = c.url(host)
	}
	return env(append(append([]string{"NATS_URL", u}, c.env...), more...)...)
}

// printedBy runs every command on every path with the case's secrets and
// returns everything printed: usage, refusals, serve's log (startup,
// warnings, failures to connect), the status page, status.json, its
// events and the metrics, the tools' output and errors, and the embedded
// server's log. Without tools, it leaves out what is asked of a serving
// replica: its listener and the tools run while it serves.
func printedBy(t *testing.T, s *server.Server, c fuzzCase, tools bool) []string {
	var (
		mu      sync.Mutex // ops may run at once (see status below)
		printed []string
	)
	keep := func(texts ...string) {
		mu.Lock()
		defer mu.Unlock()
		printed = append(printed, texts...)
	}
	op := func(getenv func(string) string, args ...string) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var out, errs syncBuffer
		err := run(ctx, append(args, c.args...), getenv, &out, &errs)
		keep(out.String(), errs.String())
		if err != nil {
			keep(err.Error())
		}
	}
	host := s.Addr().String()
	here := c.getenv(host)

	for _, cmd := range []string{"serve", "status", "disable", "enable", "check", "explain", "healthcheck", "config", "config show", "config set"} {
		op(here, append(strings.Fields(cmd), "-h")...)
	}
	op(here, "status", "--no-such-flag")
	op(here, "serve", "--log-level", "loud")
	op(here, "check", "/nonexistent/gl_config.json")

	// Serving, with its listener, and the tools while it serves.
	p := startProgram(t, c.getenv(host, "BROKER_METRICS_ADDR", "127.0.0.1:0"), append([]string{"--id", "fuzz"}, c.args...)...)
	ready := natstest.Eventually
	var addr string
	ready(t, 10*time.Second, func() bool {
		logs := p.logs.String()
		if l, ok := logLine(logs, "metrics listening"); ok {
			addr, _ = l["addr"].(string)
		}
		_, serving := logLine(logs, "serving")
		_, failing := logLine(logs, "cannot connect to NATS; retrying every second")
		select {
		case err := <-p.done:
			p.done <- err
			return true // refused at startup
		default:
		}
		return serving || failing
	}, "serve to start, fail or give up")
	if _, serving := logLine(p.logs.String(), "serving"); serving && tools {
		for _, path := range []string{"/", "/status.json", "/metrics", "/healthz", "/readyz", "/events", "/explain?ingress=/azure/"} {
			keep(fuzzGet(t, addr, path))
		}
		op(env("BROKER_METRICS_ADDR", addr), "healthcheck")
		op(env("BROKER_METRICS_ADDR", addr), "explain", "/azure/")
		op(env("BROKER_METRICS_ADDR", addr), "explain", "/azure/", "--json")
		// Both listen for the replica's next word, an idle replica's
		// heartbeat (up to a second): together, they wait for one.
		var both sync.WaitGroup
		for _, args := range [][]string{{"status"}, {"status", "--json"}} {
			both.Go(func() { op(here, args...) })
		}
		both.Wait()
		op(here, "disable", "/azure/gpt4/", "--for", "1m", "--reason", "fuzz")
		op(here, "enable", "/azure/gpt4/")
		op(c.getenv(host, "BROKER_BUCKET", "no_such_bucket"), "status")
		op(here, "config", "show")
		op(here, "config", "history")
		keep(fuzzWatch(t, here, c.args))
	}
	p.stop()
	keep(p.logs.String(), p.out.String())

	// A server that is not there.
	away := c.getenv(unreachable)
	p = startProgram(t, away, c.args...)
	ready(t, 10*time.Second, func() bool {
		_, failing := logLine(p.logs.String(), "cannot connect to NATS; retrying every second")
		select {
		case err := <-p.done:
			p.done <- err
			return true
		default:
		}
		return failing
	}, "serve to fail")
	if err := p.stop(); err != nil {
		keep(err.Error())
	}
	keep(p.logs.String(), p.out.String())
	op(away, "status")
	op(away, "disable", "/azure/gpt4/")
	return printed
}

// fuzzInputBudget is how long one input of the fuzz target may take. Go's
// fuzz worker panics when one call of the fuzz function takes 10 s
// (internal/fuzz.RunFuzzWorker's "deadlocked!" timer) and, its output not
// being kept, the coordinator says only that the fuzzing process
// terminated with exit status 2. The first input of each mode runs every
// path six times (surrounding): it must stay well within that, and a plain
// `go test` says so when it does not.
const fuzzInputBudget = 7 * time.Second

// inputBudget fails an input of the fuzz target that took longer than
// fuzzInputBudget, in a plain run where Go's fuzz worker would have been
// killed without a word.
func inputBudget(t *testing.T, start time.Time) {
	if took := time.Since(start); took > fuzzInputBudget {
		t.Errorf("the input took %v: more than %v, and Go's fuzz worker is killed without a word at 10s", took.Round(time.Millisecond), fuzzInputBudget)
	}
}

// fuzzGet fetches path from the listener at addr; an event stream, up to
// its first event.
func fuzzGet(t *testing.T, addr, path string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	if path != "/events" {
		body, _ := io.ReadAll(resp.Body)
		return string(body)
	}
	var event strings.Builder
	r := bufio.NewReader(resp.Body)
	for {
		line, err := r.ReadString('\n')
		event.WriteString(line)
		if err != nil || line == "\n" && strings.Contains(event.String(), "data:") {
			return event.String()
		}
	}
}

// fuzzWatch runs status --watch until its first table.
func fuzzWatch(t *testing.T, getenv func(string) string, args []string) string {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errs syncBuffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, append([]string{"status", "--watch"}, args...), getenv, &out, &errs) }()
	natstest.Eventually(t, 10*time.Second, func() bool { return strings.Contains(out.String(), "/azure/gpt4/") }, "a table")
	cancel()
	if err := <-done; err != nil {
		return out.String() + errs.String() + err.Error()
	}
	return out.String() + errs.String()
}

// shownAs are the ways output may hold s: as it is, on one line, quoted
// (Go, JSON, the text log), escaped for HTML and for URLs.
func shownAs(s string) []string {
	j, _ := json.Marshal(s)
	var plain strings.Builder
	enc := json.NewEncoder(&plain)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)
	unquote := func(q string) string { return strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(q), `"`), `"`) }
	return []string{s, natsconn.OneLine(s), unquote(strconv.Quote(s)), unquote(strconv.QuoteToASCII(s)), unquote(string(j)),
		unquote(plain.String()), html.EscapeString(s), url.PathEscape(s), url.QueryEscape(s), url.User(s).String()}
}

// foldDigits makes every digit a 0, so that a secret of digits is not
// taken for a leak when a time or a port happens to hold it.
func foldDigits(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= '0' && r <= '9' {
			return '0'
		}
		return r
	}, s)
}

// secretShown returns what of secret the output shows: the secret, or a
// piece of it between URL delimiters, of 4 bytes or more, as any of
// shownAs. A piece the program prints whatever the secrets (surrounding:
// "nats", "127.0.0.1", a word of a log line), and white space, tell
// nothing.
func secretShown(output, secret, surrounding string) string {
	output, surrounding = foldDigits(output), foldDigits(surrounding)
	pieces := append(strings.FieldsFunc(secret, func(r rune) bool { return strings.ContainsRune("/?#@:,% \t\r\n", r) }), secret)
	for _, p := range pieces {
		if len(p) < 4 || strings.TrimSpace(p) == "" {
			continue
		}
		for _, shown := range shownAs(p) {
			shown = foldDigits(shown)
			if len(shown) >= 4 && !strings.Contains(surrounding, shown) && strings.Contains(output, shown) {
				return shown
			}
		}
	}
	return ""
}

// FuzzSecretsNeverPrinted gives the broker generated secrets of any bytes
// (/, ?, #, @, :, %, spaces, newlines, invalid UTF-8 and all) every way it
// takes them, and shows that nothing it prints on any path shows them.
func FuzzSecretsNeverPrinted(f *testing.F) {
	for _, seed := range []struct {
		mode                  uint8
		user, password, token string
	}{
		{0, "bob", "pa/ssw0rd", ""}, {0, "bob", "pa?ss#w0rd", ""}, {1, "", "", "t0k/en#frag?q"},
		{0, "bo b", "pa ss\nw0rd", ""}, {0, "b@b", "p@ss:w0rd@", ""}, {9, "bob", "pa,ssw0rd", "tok,en"},
		{2, "bö b", "pä/ss?w#0rd\r\n%zz", ""}, {3, "", "", "tö/k?e#n@:%"}, {4, "", "", "t0k\"en<script>\\"},
		{5, "user-name", "pass\u202eword", ""}, {6, "flag-user", "flag/pass#word", ""},
		{7, "", "SUAMLK2ZNL35WSMW37E7UD4VZ7ELPKW7DHC3BWBSD2GCZ7IUQQXZIORRBU", "eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.e30"},
		{8, "", "", "SUAMLK2ZNL35WSMW37E7UD4VZ7ELPKW7DHC3BWBSD2GCZ7IUQQXZIORRBU"},
	} {
		f.Add(seed.mode, seed.user, seed.password, seed.token)
	}
	s := natstest.Start(f, func(o *server.Options) {
		o.CustomClientAuthentication = anyCredentials{}
		o.AlwaysEnableNonce = true // for the nkey and the credentials file
	})
	surrounding := map[uint8]string{} // by mode; a worker runs one input at a time
	f.Fuzz(func(t *testing.T, mode uint8, user, password, token string) {
		defer inputBudget(t, time.Now())
		if len(user)+len(password)+len(token) > 200 {
			t.Skip("secrets of a reasonable length")
		}
		mode %= fuzzModes
		if _, ok := surrounding[mode]; !ok {
			// What the same paths print with secrets too short to tell, and
			// with ones refused for each reason. Where one of those is not
			// refused, its replica serves as the first one's does: the
			// tools' output is the first one's, and is not asked again
			// (each status listens for a replica's heartbeat).
			var texts []string
			for i, secrets := range [][3]string{{"u", "p", "t"}, {"u", "p/q", "t/q"}, {"u", "p q", "t q"}, {"u", "p%q", "t%q"}, {"u", "p,q", "t,q"}} {
				texts = append(texts, printedBy(t, s, fuzzCaseOf(t, mode, secrets[0], secrets[1], secrets[2]), i == 0)...)
			}
			surrounding[mode] = strings.Join(texts, "\n")
		}
		c := fuzzCaseOf(t, mode, user, password, token)
		output := strings.Join(printedBy(t, s, c, true), "\n")
		if _, served := logLine(output, "serving"); mode == 4 && !served {
			// A token of any bytes is sent as it is: the paths of a serving
			// replica were taken.
			t.Fatalf("NATS_TOKEN %q: the replica did not serve:\n%s", token, output)
		}
		for _, secret := range c.secrets {
			if shown := secretShown(output, secret, surrounding[mode]); shown != "" {
				t.Errorf("secret %q shown as %q in:\n%s", secret, shown, output)
			}
		}
	})
}
