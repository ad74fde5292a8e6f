package main

// Security, proven end to end on embedded nats-servers on loopback: every
// way of authenticating the broker offers, each against a server that
// requires it; secrets kept out of everything the program prints; and the
// least NATS permissions the processor and the operator commands need,
// each shown to be enough and each shown to be needed.

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/internal/testutil/natstest"
)

// secAuthCase is one way of authenticating: a server that requires it, the
// settings that satisfy it, settings that do not, and how the test's own
// gecholog-side client gets in.
type secAuthCase struct {
	name    string
	server  []natstest.Option
	url     func(*server.Server) string // the processor's NATS_URL; nil: the server's URL
	good    []string                    // environment that authenticates
	refused []secRefusal
	client  []nats.Option
}

// secRefusal is an environment the broker cannot connect with, and what
// its warning says about why.
type secRefusal struct {
	name string
	env  []string
	says string // in the warning's error or hint
}

// refusedCredentials is the hint the broker gives when the server refuses
// its credentials.
const refusedCredentials = "the server refused the credentials"

// secAuthCases are the ways of authenticating, with credentials made for
// the test.
func secAuthCases(t *testing.T) []secAuthCase {
	nkeyPub, _, nkeyFile := secNkey(t)
	gwPub, _, gwFile := secNkey(t)
	_, _, wrongFile := secNkey(t)
	gwNkey, err := nats.NkeyOptionFromSeed(gwFile)
	if err != nil {
		t.Fatal(err)
	}
	op := newSecOperator(t)
	brokerCreds, _ := op.user(t, "broker")
	gwCreds, _ := op.user(t, "gateway")
	otherCreds, _ := newSecOperator(t).user(t, "stranger") // signed by an account this server does not trust
	pki := newSecPKI(t)
	users := func(o *server.Options) {
		o.Users = []*server.User{{Username: "broker", Password: "broker-pw"}, {Username: "gateway", Password: "gateway-pw"}}
	}
	return []secAuthCase{
		{
			name:   "token",
			server: []natstest.Option{natstest.WithToken("the-token")},
			good:   []string{"NATS_TOKEN", "the-token"},
			refused: []secRefusal{
				{"no token", nil, refusedCredentials},
				{"wrong token", []string{"NATS_TOKEN", "not-the-token"}, refusedCredentials},
			},
			client: []nats.Option{nats.Token("the-token")},
		},
		{
			name:   "user and password",
			server: []natstest.Option{users},
			good:   []string{"NATS_USER", "broker", "NATS_PASSWORD", "broker-pw"},
			refused: []secRefusal{
				{"no user", nil, refusedCredentials},
				{"wrong password", []string{"NATS_USER", "broker", "NATS_PASSWORD", "gateway-pw"}, refusedCredentials},
			},
			client: []nats.Option{nats.UserInfo("gateway", "gateway-pw")},
		},
		{
			name: "nkey",
			server: []natstest.Option{func(o *server.Options) {
				o.Nkeys = []*server.NkeyUser{{Nkey: nkeyPub}, {Nkey: gwPub}}
			}},
			good: []string{"NATS_NKEY", nkeyFile},
			refused: []secRefusal{
				{"no nkey", nil, refusedCredentials},
				{"unknown nkey", []string{"NATS_NKEY", wrongFile}, refusedCredentials},
				{"the public key as a user", []string{"NATS_USER", nkeyPub, "NATS_PASSWORD", "x"}, refusedCredentials},
			},
			client: []nats.Option{gwNkey},
		},
		{
			name:   "creds",
			server: []natstest.Option{op.option},
			good:   []string{"NATS_CREDS", brokerCreds},
			refused: []secRefusal{
				{"no creds", nil, refusedCredentials},
				{"another operator's user", []string{"NATS_CREDS", otherCreds}, refusedCredentials},
			},
			client: []nats.Option{nats.UserCredentials(gwCreds)},
		},
		{
			name:   "TLS client certificate",
			server: []natstest.Option{pki.option()},
			url:    tlsURL,
			good:   []string{"NATS_CA", pki.caFile, "NATS_CERT", pki.certFile, "NATS_KEY", pki.keyFile},
			refused: []secRefusal{
				// Without the CA the broker cannot verify the server.
				{"no CA", []string{"NATS_CERT", pki.certFile, "NATS_KEY", pki.keyFile}, "certificate signed by unknown authority"},
				// Without a certificate the server refuses the broker: TLS 1.3
				// tells the client during the handshake or just after it.
				{"no client certificate", []string{"NATS_CA", pki.caFile}, "tls"},
			},
			client: []nats.Option{nats.Secure(pki.client)},
		},
	}
}

// TestEachAuthMethodServesAndRunsTheToolsOnAServerThatRequiresIt runs the
// processor and then status, disable and enable, each with one way of
// authenticating against a server that requires it, and shows that the
// same settings without the method are refused, for the processor and for
// every tool alike.
func TestEachAuthMethodServesAndRunsTheToolsOnAServerThatRequiresIt(t *testing.T) {
	for _, tc := range secAuthCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			is := is.New(t)
			s := natstest.Start(t, tc.server...)
			url := s.ClientURL()
			if tc.url != nil {
				url = tc.url(s)
			}
			// The server requires the method: a client without it is refused.
			if nc, err := nats.Connect(s.ClientURL(), nats.Timeout(5*time.Second)); err == nil {
				nc.Close()
				t.Fatal("the server let a client in without credentials")
			}
			gw := natstest.Connect(t, s, tc.client...)
			good := env(append([]string{"NATS_URL", url}, tc.good...)...)

			r := startMetricsReplica(t, url, append(slices.Clone(tc.good), "BROKER_ID", "replica-1")...)
			waitReady(t, r)
			is.Equal(r.status(t).Mode, "ttl")                                        // the shared bucket, not local mode
			saysFirst(t, "the answer", string(secAsk(t, gw)), `{"gl_path":"/azure/`) // a pool router

			// The operator's tools, with the processor's settings: each one's
			// effect is seen by the replica, through the bucket, and by status.
			out, errs, err := runOp(good, "disable", "/azure/gpt4/", "--for", "1h", "--by", "alice")
			is.NoErr(err)                                                                                // disable
			saysFirst(t, "the output", out, "disabled /azure/gpt4/ on every replica for 1h0m0s, until ") // confirmed
			is.Equal(errs, "")
			r.awaitRouter(t, "/azure/gpt4/", "manual", "alice")
			is.Equal(secState(t, good, "/azure/gpt4/"), "disabled") // status
			out, _, err = runOp(good, "enable", "/azure/gpt4/")
			is.NoErr(err) // enable
			saysFirst(t, "the output", out, "enabled /azure/gpt4/ on every replica; removed the manual disable by alice")
			r.awaitRouter(t, "/azure/gpt4/", "enabled", "")
			is.Equal(secState(t, good, "/azure/gpt4/"), "enabled")
			is.NoErr(r.stop())

			for _, rc := range tc.refused {
				t.Run(rc.name, func(t *testing.T) {
					is := is.New(t)
					refused := env(append([]string{"NATS_URL", url}, rc.env...)...)
					r := startProgram(t, refused)
					line := r.await(t, "cannot connect to NATS; retrying every second")
					says(t, "the warning", fmt.Sprint(line["error"], " ", line["hint"]), rc.says) // says why
					is.NoErr(r.stop())                                                            // cancelled while retrying: a clean stop
					_, served := logLine(r.logs.String(), "serving")
					is.True(!served) // never serving

					for _, args := range [][]string{{"status"}, {"disable", "/azure/gpt4/"}, {"enable", "/azure/gpt4/"}} {
						out, _, err := runOp(refused, args...)
						is.True(err != nil)                                                  // the tool is refused too
						saysFirst(t, "the error", err.Error(), "cannot connect to NATS at ") // at connecting
						says(t, "the error", err.Error(), rc.says)                           // saying why
						is.Equal(out, "")
					}
				})
			}
			// Nothing the refused tools tried reached the bucket.
			is.Equal(secState(t, good, "/azure/gpt4/"), "enabled")
		})
	}
}

// secSecretCase is a credential the broker is given, and the strings that
// must never be printed.
type secSecretCase struct {
	name    string
	server  []natstest.Option
	secrets []string
	env     func(url string) []string // the processor's and the tools' settings
	wrong   func(url string) []string // settings the server refuses, holding a secret too
	client  []nats.Option
}

func TestSecretsNeverAppearInLogsUsageOrToolOutput(t *testing.T) {
	const (
		token  = "tok-S3CR3T-a71c"
		pw     = "pw-S3CR3T-b82d"
		urlPW  = "s3cr3tpw-c93e"
		gwPass = "gateway-pw"
	)
	nkeyPub, nkeySeed, nkeyFile := secNkey(t)
	op := newSecOperator(t)
	credsFile, credsSeed := op.user(t, "broker")
	gwCreds, _ := op.user(t, "gateway")
	users := func(o *server.Options) {
		o.Users = []*server.User{
			{Username: "broker", Password: pw},
			{Username: "urlbroker", Password: urlPW},
			{Username: "gateway", Password: gwPass},
		}
		o.Nkeys = []*server.NkeyUser{{Nkey: nkeyPub}}
	}
	inURL := func(userinfo string) func(string) string {
		return func(url string) string { return strings.Replace(url, "nats://", "nats://"+userinfo+"@", 1) }
	}
	for _, tc := range []secSecretCase{
		{
			name: "NATS_TOKEN", server: []natstest.Option{natstest.WithToken(token)}, secrets: []string{token},
			env:    func(url string) []string { return []string{"NATS_URL", url, "NATS_TOKEN", token} },
			wrong:  func(url string) []string { return []string{"NATS_URL", url, "NATS_TOKEN", token + "-old"} },
			client: []nats.Option{nats.Token(token)},
		},
		{
			name: "token in NATS_URL", server: []natstest.Option{natstest.WithToken(token)}, secrets: []string{token},
			env:    func(url string) []string { return []string{"NATS_URL", inURL(token)(url)} },
			wrong:  func(url string) []string { return []string{"NATS_URL", inURL(token + "-old")(url)} },
			client: []nats.Option{nats.Token(token)},
		},
		{
			name: "NATS_PASSWORD", server: []natstest.Option{users}, secrets: []string{pw},
			env: func(url string) []string {
				return []string{"NATS_URL", url, "NATS_USER", "broker", "NATS_PASSWORD", pw}
			},
			wrong: func(url string) []string {
				return []string{"NATS_URL", url, "NATS_USER", "broker", "NATS_PASSWORD", pw + "-old"}
			},
			client: []nats.Option{nats.UserInfo("gateway", gwPass)},
		},
		{
			name: "password in NATS_URL", server: []natstest.Option{users}, secrets: []string{urlPW},
			env:    func(url string) []string { return []string{"NATS_URL", inURL("urlbroker:" + urlPW)(url)} },
			wrong:  func(url string) []string { return []string{"NATS_URL", inURL("urlbroker:" + urlPW + "-old")(url)} },
			client: []nats.Option{nats.UserInfo("gateway", gwPass)},
		},
		{
			name: "NATS_NKEY seed", server: []natstest.Option{users}, secrets: []string{nkeySeed},
			env:    func(url string) []string { return []string{"NATS_URL", url, "NATS_NKEY", nkeyFile} },
			client: []nats.Option{nats.UserInfo("gateway", gwPass)},
		},
		{
			name: "NATS_CREDS seed", server: []natstest.Option{op.option}, secrets: []string{credsSeed},
			env:    func(url string) []string { return []string{"NATS_URL", url, "NATS_CREDS", credsFile} },
			client: []nats.Option{nats.UserCredentials(gwCreds)},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			is := is.New(t)
			s := natstest.Start(t, tc.server...)
			gw := natstest.Connect(t, s, tc.client...)
			getenv := env(tc.env(s.ClientURL())...)
			var printed []string // everything the program printed, in every run
			keep := func(texts ...string) { printed = append(printed, texts...) }

			// Serving, with a failure report and a reconnect, so that warnings
			// and the reconnect lines are logged too.
			r := startProgram(t, getenv, "--id", "replica-1")
			r.await(t, "serving")
			saysFirst(t, "the answer", string(secAsk(t, gw)), `{"gl_path":"/azure/`) // a pool router
			secReport(t, gw, "/azure/dud/", 502)
			r.await(t, "router disabled", "router", "/azure/dud/")
			// Kicked only once the disable is in the bucket, so that no write
			// is in flight and stopping does not wait for its retry.
			natstest.Eventually(t, 10*time.Second, func() bool {
				return secState(t, getenv, "/azure/dud/") == "disabled"
			}, "the disable in the bucket")
			is.Equal(secKick(t, s, "replica-1"), 1)
			r.await(t, "disconnected from NATS; reconnecting")
			r.await(t, "reconnected to NATS")
			natstest.Eventually(t, 10*time.Second, func() bool {
				m, err := gw.Request("coburn.gl.broker", []byte(`{"gl_path":"/azure/"}`), time.Second)
				return err == nil && bytes.HasPrefix(m.Data, []byte(`{"gl_path":"/azure/`))
			}, "answers after the reconnect")

			// The operator's commands, with the same settings.
			for _, args := range [][]string{
				{"status"}, {"status", "--json"},
				{"disable", "/azure/gpt4/", "--for", "1m", "--reason", "maintenance"},
				{"enable", "/azure/gpt4/"},
			} {
				out, errs, err := runOp(getenv, args...)
				is.NoErr(err) // the command works with these credentials
				keep(out, errs)
			}
			r.await(t, "router disabled", "router", "/azure/gpt4/")
			is.NoErr(r.stop())
			keep(r.out.String(), r.logs.String())

			// Usage of every command, printed with the secret in the environment.
			for _, cmd := range []string{"serve", "status", "disable", "enable"} {
				out, errs, err := runOp(getenv, cmd, "-h")
				is.NoErr(err)
				says(t, "the output", out, "NATS_URL") // the usage was printed
				keep(out, errs)
			}

			// Failing to connect: a server that is not there, and one that
			// refuses the credentials.
			failing := map[string]func(string) string{
				"unreachable": env(tc.env("nats://127.0.0.1:1")...), // nothing listens on port 1
			}
			if tc.wrong != nil {
				failing["refused"] = env(tc.wrong(s.ClientURL())...)
			}
			for _, getenv := range failing {
				r := startProgram(t, getenv)
				r.await(t, "cannot connect to NATS; retrying every second")
				is.NoErr(r.stop())
				keep(r.out.String(), r.logs.String())
				out, errs, err := runOp(getenv, "status")
				is.True(err != nil) // the tool fails
				keep(out, errs, err.Error())
			}

			all := strings.Join(printed, "\n")
			for _, msg := range []string{"serving", "router disabled", "disconnected from NATS; reconnecting",
				"reconnected to NATS", "cannot connect to NATS; retrying every second"} {
				_, ok := logLine(all, msg)
				is.True(ok) // the output checked holds the lines that name the server
			}
			for _, secret := range tc.secrets {
				for line := range strings.Lines(all) {
					if strings.Contains(line, secret) {
						t.Errorf("secret %q printed in: %s", secret, line)
					}
				}
			}
		})
	}
}

func TestAMistypedNATSURLNeverPrintsItsSecrets(t *testing.T) {
	for _, tc := range []struct{ name, url, secret, says string }{
		// A typo in the port: net/url refuses the URL and quotes it,
		// credentials and all, in its error.
		{"token", "nats://tok-S3CR3T-d04f@127.0.0.1:4x", "tok-S3CR3T-d04f", "numeric port"},
		{"password", "nats://broker:pw-S3CR3T-e15a@127.0.0.1:4x", "pw-S3CR3T-e15a", "numeric port"},
		// A /, ? or # in a password ends the user information for net/url,
		// which takes the rest of the secret for the path.
		{"slash", "nats://bob:pa/ssw0rd-S3CR3T@127.0.0.1:4222", "ssw0rd-S3CR3T", "%2F"},
		{"question mark", "nats://bob:pa?ssw0rd-S3CR3T@127.0.0.1:4222", "ssw0rd-S3CR3T", "%3F"},
		{"hash", "nats://t0k#en-S3CR3T@127.0.0.1:4222", "en-S3CR3T", "%23"},
		// nats.go splits a list at every comma, also one in a password.
		{"comma", "nats://bob:pa,ssw0rd-S3CR3T@127.0.0.1:4222", "ssw0rd-S3CR3T", "%2C"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, args := range [][]string{nil, {"status"}, {"disable", "/azure/gpt4/"}, {"enable", "/azure/gpt4/"}} {
				is := is.New(t)
				// It can never connect: refused at once, before connecting.
				out, errs, err := runOp(env("NATS_URL", tc.url), args...)
				is.True(err != nil)                                              // refused
				saysFirst(t, "the error", err.Error(), "NATS_URL ")              // naming the setting
				says(t, "the error", err.Error(), "[redacted]@127.0.0.1:4")      // and the host
				says(t, "the error", err.Error(), tc.says)                       // saying how to fix it
				oneLine(t, err)                                                  // in one line
				neverSays(t, "what it printed", out+errs+err.Error(), tc.secret) // never the secret
			}
		})
	}
}

func TestProcessorAndToolsWorkWithLeastPrivilege(t *testing.T) {
	t.Parallel()
	is := is.New(t)
	s, v := secRoleServer(t, leastRoles)

	logs, ok := driveProcessor(t, s, v)
	is.True(ok)                                                                   // serves, shares disables, reconnects and stops
	neverSays(t, "the log", logs, `"level":"ERROR"`)                              // without an error on the way
	is.Equal(secState(t, secUser(s, "broker-viewer"), "/azure/dud/"), "disabled") // the failure report's key, read by the viewer
	is.True(driveTools(t, s, v, "broker-viewer", statusCommands))                 // the viewer's commands are let through
	is.True(driveTools(t, s, v, "broker-admin", adminCommands))                   // and the admin's
	is.Equal(v.subjects(), []string(nil))                                         // no request was refused
	is.Equal(secState(t, secUser(s, "broker-viewer"), "/azure/dud/"), "enabled")  // the admin's enable landed
}

// TestDisableAndEnableConfirmWithLeastPrivilege runs a replica and the
// admin's disable and enable with exactly the least-privilege roles: each
// hears the replica confirm, and no request is refused.
func TestDisableAndEnableConfirmWithLeastPrivilege(t *testing.T) {
	is := is.New(t)
	s, v := secRoleServer(t, leastRoles)
	r := startProgram(t, secUser(s, "broker"), "--id", "replica-1")
	r.await(t, "serving")
	admin := secUser(s, "broker-admin")

	out, _, err := runOp(admin, "disable", "/azure/gpt4/", "--for", "1m", "--by", "alice")
	is.NoErr(err)
	saysFirst(t, "the output", out, "disabled /azure/gpt4/ on every replica for 1m0s, until ")
	saysLast(t, "the output", out, "; confirmed by the 1 replica heard\n")
	out, _, err = runOp(admin, "enable", "/azure/gpt4/")
	is.NoErr(err)
	saysFirst(t, "the output", out, "enabled /azure/gpt4/ on every replica; removed the manual disable by alice")
	saysLast(t, "the output", out, "; confirmed by the 1 replica heard\n")
	is.NoErr(r.stop())
	is.Equal(v.subjects(), []string(nil)) // no request was refused
}

func TestAViewerWithLeastPrivilegeCannotDisable(t *testing.T) {
	t.Parallel()
	is := is.New(t)
	s, v := secRoleServer(t, leastRoles)
	is.True(!driveTools(t, s, v, "broker-viewer", [][]string{{"disable", "/azure/gpt4/"}})) // refused
	// Refused reading the key it would write (status reads the bucket
	// with a consumer, so a viewer may not read a key alone): nothing is
	// written.
	is.Equal(v.subjects(), []string{"$JS.API.DIRECT.GET.KV_gl_broker.$KV.gl_broker./azure/gpt4/"})
}

func TestProcessorWithoutCreatePermissionsServesFromABucketCreatedBeforehand(t *testing.T) {
	t.Parallel()
	is := is.New(t)
	roles := leastRoles
	roles.processor = withoutCreating(processorRole)
	is.Equal(len(roles.processor.publish), len(processorRole.publish)-4) // the four taken away
	s, v := secRoleServer(t, roles)
	// Created beforehand, as a replica with every permission creates them.
	secSeedBuckets(t, s)

	logs, ok := driveProcessor(t, s, v)
	is.Equal(v.subjects(), []string(nil))            // no request was refused
	is.True(ok)                                      // serves, shares disables, reconnects and stops
	neverSays(t, "the log", logs, `"level":"ERROR"`) // without an error on the way
}

func TestProcessorWithoutCreatePermissionsNamesTheRefusalWhenTheBucketIsMissing(t *testing.T) {
	t.Parallel() // waits out two 5 s attempts: the configuration's bucket, then the health bucket
	is := is.New(t)
	roles := leastRoles
	roles.processor = withoutCreating(processorRole)
	s, v := secRoleServer(t, roles)
	gw := natstest.Connect(t, s, nats.UserInfo("gateway", "gateway-pw"))

	r := startProgram(t, secUser(s, "broker"))
	refused := r.await(t, "NATS error")
	is.Equal(refused["level"], "ERROR")
	says(t, "the error", fmt.Sprint(refused["error"]), `Permissions Violation for Publish to "$JS.API.INFO"`) // names what it may not do
	// The replica gives the fleet configuration's bucket 5 s, then the
	// health bucket 5 s: the line comes 10 s on, and 10 s was the whole
	// wait here (it failed once by 6 ms).
	r.awaitWithin(t, 30*time.Second, "cannot open the router health bucket; retrying", "bucket", "gl_broker") // and which bucket it cannot open
	_, served := logLine(r.logs.String(), "serving")
	is.True(!served) // no serving without the bucket: not in local mode either
	_, err := gw.Request("coburn.gl.broker", []byte(`{"gl_path":"/azure/"}`), 2*time.Second)
	isErr(t, err, nats.ErrNoResponders)                              // no replica takes gecholog's calls
	is.NoErr(r.stop())                                               // cancelled while retrying: a clean stop
	is.Equal(slices.Compact(v.subjects()), []string{"$JS.API.INFO"}) // the first step of creating it, and nothing else
	js, err := jetstream.New(gw)
	is.NoErr(err)
	_, err = js.KeyValue(context.Background(), "gl_broker")
	isErr(t, err, jetstream.ErrBucketNotFound) // still missing
}

func TestAReplicaWhoseSubscriptionIsRefusedStopsNamingThePermission(t *testing.T) {
	is := is.New(t)
	roles := leastRoles
	roles.processor.subscribe = []string{"_INBOX.>"} // without "coburn.gl.broker broker"
	s, _ := secRoleServer(t, roles)
	// Cancelled, a replica stops cleanly and run returns nil; refused, it
	// returns the error at once.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var logs syncBuffer
	err := run(ctx, nil, secUser(s, "broker"), &syncBuffer{}, &logs)
	is.True(err != nil) // startup stops
	saysFirst(t, "the error", err.Error(), `subscribe to "coburn.gl.broker" in queue group "broker": `)
	saysLast(t, "the error", err.Error(), `: allow the broker's NATS user to subscribe to "coburn.gl.broker broker"`) // saying which permission to grant
	oneLine(t, err)                                                                                                   // in one line
	_, served := logLine(logs.String(), "serving")
	is.True(!served) // never serving
}

// TestLeastPrivilegeHasNoPermissionToSpare takes each permission away in
// turn and shows that the processor or a tool is then refused a request
// it makes: the roles are the least, not merely enough.
func TestLeastPrivilegeHasNoPermissionToSpare(t *testing.T) {
	for _, role := range []struct {
		name  string
		role  secRole
		set   func(*secRoles, secRole)
		drive func(*testing.T, *server.Server, *secViolations) bool
	}{
		{"processor", processorRole, func(r *secRoles, x secRole) { r.processor = x },
			func(t *testing.T, s *server.Server, v *secViolations) bool {
				_, ok := driveProcessor(t, s, v)
				return ok
			}},
		{"admin", adminRole, func(r *secRoles, x secRole) { r.admin = x },
			func(t *testing.T, s *server.Server, v *secViolations) bool {
				return driveTools(t, s, v, "broker-admin", adminCommands)
			}},
		{"viewer", viewerRole, func(r *secRoles, x secRole) { r.viewer = x },
			func(t *testing.T, s *server.Server, v *secViolations) bool {
				return driveTools(t, s, v, "broker-viewer", statusCommands)
			}},
	} {
		for _, less := range role.role.withoutEach() {
			t.Run(role.name+" without "+less.taken, func(t *testing.T) {
				t.Parallel()
				is := is.New(t)
				roles := leastRoles
				role.set(&roles, less.role)
				s, v := secRoleServer(t, roles)
				role.drive(t, s, v)
				// Some requests come only after the others succeeded, such as
				// the watcher's consumer delete when it re-watches after a
				// reconnect: wait for the refusal.
				natstest.Eventually(t, 10*time.Second, func() bool { return len(v.subjects()) > 0 }, "a refused request")
				refused := v.subjects()[0]
				is.True(refused == less.refused || server.SubjectMatchesFilter(refused, less.refused)) // for the permission taken
			})
		}
	}
}

// readmeLeastPrivilege is the nats-server.conf block of docs/security.md's "Least
// privilege" section: the first fenced block after the heading, which
// must come before the next heading.
func readmeLeastPrivilege(t *testing.T) string {
	t.Helper()
	const readme, heading = "../../docs/security.md", "## Least privilege\n"
	b, err := os.ReadFile(readme)
	if err != nil {
		t.Fatalf("read %s: %v", readme, err)
	}
	_, section, ok := strings.Cut(string(b), "\n"+heading)
	if !ok {
		t.Fatalf("%s has no %q heading", readme, strings.TrimSpace(heading))
	}
	prose, block, ok := strings.Cut(section, "\n```\n")
	if !ok || strings.Contains(prose, "\n#") {
		t.Fatalf("%s: no fenced block under %q before the next heading", readme, strings.TrimSpace(heading))
	}
	block, _, ok = strings.Cut(block, "\n```\n")
	if !ok {
		t.Fatalf("%s: the block under %q is not closed", readme, strings.TrimSpace(heading))
	}
	if !strings.HasPrefix(block, "authorization {") {
		t.Fatalf("%s: the block under %q is not an authorization block:\n%s", readme, strings.TrimSpace(heading), block)
	}
	return block + "\n"
}

// secGrant is a user's permissions as the server holds them, with every
// list sorted, so that two grants compare equal when they allow the same.
type secGrant struct {
	PublishAllow, PublishDeny, SubscribeAllow, SubscribeDeny []string
	Responses                                                string // allow_responses: "none" or its limits
}

func grantOf(p *server.Permissions) secGrant {
	sorted := func(s []string) []string { return slices.Sorted(slices.Values(s)) }
	g := secGrant{Responses: "none"}
	if p == nil {
		return g
	}
	if p.Publish != nil {
		g.PublishAllow, g.PublishDeny = sorted(p.Publish.Allow), sorted(p.Publish.Deny)
	}
	if p.Subscribe != nil {
		g.SubscribeAllow, g.SubscribeDeny = sorted(p.Subscribe.Allow), sorted(p.Subscribe.Deny)
	}
	if p.Response != nil {
		g.Responses = fmt.Sprintf("%+v", *p.Response)
	}
	return g
}

// grantsOf loads conf as nats-server does, with the README's password
// variables set, and returns each user's grant.
func grantsOf(t *testing.T, conf string) map[string]secGrant {
	t.Helper()
	o, err := server.ProcessConfigFile(writeFile(t, "nats-server.conf", []byte(conf)))
	if err != nil {
		t.Fatalf("nats-server cannot load the README's block: %v\n%s", err, conf)
	}
	grants := map[string]secGrant{}
	for _, u := range o.Users {
		if u.Permissions == nil {
			t.Fatalf("the README's user %s has no permissions: it could do anything", u.Username)
		}
		grants[u.Username] = grantOf(u.Permissions)
	}
	return grants
}

// TestLeastPrivilegeInTheReadmeIsWhatTheTestsGrant reads the README's
// nats-server.conf block as nats-server does and shows that each user in it
// has exactly the permissions the least-privilege tests above grant, and
// that the README's "leave out for status only" gives exactly the viewer's.
func TestLeastPrivilegeInTheReadmeIsWhatTheTestsGrant(t *testing.T) {
	is := is.New(t)
	t.Setenv("BROKER_NATS_PASSWORD", "p1")
	t.Setenv("BROKER_ADMIN_NATS_PASSWORD", "p2")
	conf := readmeLeastPrivilege(t)
	granted := map[string]secGrant{}
	for _, u := range leastRoles.users() {
		granted[u.Username] = grantOf(u.Permissions)
	}

	readme := grantsOf(t, conf)
	is.Equal(slices.Sorted(maps.Keys(readme)), []string{"broker", "broker-admin"}) // the processor's user and the tools'
	for user, g := range readme {
		is.Equal(g, granted[user]) // the README's user has exactly what the tests grant that user
	}

	// The viewer is the README's admin with the lines marked for leaving out.
	var viewerConf []string
	for line := range strings.Lines(conf) {
		if !strings.Contains(line, "# leave out for status only") {
			viewerConf = append(viewerConf, line)
		}
	}
	is.Equal(len(viewerConf), strings.Count(conf, "\n")-3) // three lines are marked: $JS.API.DIRECT.GET.KV_gl_broker.>, reading a key before writing it, and $KV.gl_broker.> and $KV.gl_broker_config.>, writing keys
	viewer := grantsOf(t, strings.Join(viewerConf, ""))
	is.Equal(viewer["broker-admin"], granted["broker-viewer"]) // status only is exactly what the tests grant the viewer
}

func TestEmbeddedNATSOffLoopbackRefusesToStartWithoutAToken(t *testing.T) {
	for _, listen := range []string{"0.0.0.0:0", "[::]:0", ":0", "nats.example.com:0", "10.1.2.3:0"} {
		t.Run(listen, func(t *testing.T) {
			is := is.New(t)
			// Started, the server would serve until the context ends and run
			// would return nil.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			var out, logs syncBuffer
			err := run(ctx, []string{"--embedded-nats", "--embedded-listen", listen, "--embedded-store", t.TempDir()}, env(), &out, &logs)
			is.True(err != nil)                                                                             // refused
			saysFirst(t, "the error", err.Error(), fmt.Sprintf("embedded-listen %q: off loopback", listen)) // naming the setting
			says(t, "the error", err.Error(), "set NATS_TOKEN")                                             // and how to fix it
			oneLine(t, err)                                                                                 // in one line
			_, started := logLine(logs.String(), "embedded nats-server with JetStream started")
			is.True(!started) // never started
		})
	}
}

func TestEmbeddedNATSServesOffLoopbackWithATokenAndOnLoopbackWithout(t *testing.T) {
	for _, tc := range []struct{ listen, token string }{
		{"0.0.0.0:0", "tok-S3CR3T-a1b2"}, // every interface, the token required
		{"127.0.0.1:0", ""},
		{"localhost:0", ""},
	} {
		t.Run(tc.listen, func(t *testing.T) {
			is := is.New(t)
			p := startProgram(t, env("NATS_TOKEN", tc.token),
				"--embedded-nats", "--embedded-listen", tc.listen, "--embedded-store", t.TempDir())
			p.await(t, "serving")
			started := p.await(t, "embedded nats-server with JetStream started")
			is.Equal(started["token_required"], tc.token != "")
			_, port, err := net.SplitHostPort(started["listen"].(string))
			is.NoErr(err)
			nc, err := nats.Connect("nats://127.0.0.1:"+port, nats.Token(tc.token))
			is.NoErr(err) // the gateway's client connects
			defer nc.Close()
			m, err := nc.Request("coburn.gl.broker", []byte(`{"gl_path":"/azure/"}`), 2*time.Second)
			is.NoErr(err)
			saysFirst(t, "the answer", string(m.Data), `{"gl_path":"/azure/`) // and is answered
			if tc.token != "" {
				_, err := nats.Connect("nats://127.0.0.1:" + port)
				isErr(t, err, nats.ErrAuthorization) // without the token, refused
			}
			is.NoErr(p.stop())
		})
	}
}

func TestSubjectSettingsRefuseWildcardsNATSOwnSubjectsAndEmptyTokens(t *testing.T) {
	s := natstest.Start(t)
	bad := []string{">", "*", "coburn.>", "coburn.*.broker", "coburn.gl*", "$JS.API.>", "$SYS.REQ.SERVER.PING", "$KV.gl_broker.x",
		"", ".coburn", "coburn.", "coburn..broker", "coburn gl", "coburn\tgl", "coburn\ngl", "coburn\u00a0gl", "coburn\x00gl"}
	for _, setting := range []struct {
		flag, env string
		commands  [][]string // each with its flags before the setting's
	}{
		{"subject", "BROKER_SUBJECT", [][]string{{"serve"}, {"check", "--gl-config", "gl_config.json"}}},
		{"logger-subject", "BROKER_LOGGER_SUBJECT", [][]string{{"serve"}, {"check", "--gl-config", "gl_config.json"}}},
		{"queue", "BROKER_QUEUE", [][]string{{"serve"}}},
	} {
		values := bad
		if setting.flag == "queue" {
			values = append(slices.Clone(bad), "coburn.gl") // a queue group is one token
		}
		for _, value := range values {
			for _, command := range setting.commands {
				t.Run(fmt.Sprintf("%s %s %q", command[0], setting.flag, value), func(t *testing.T) {
					is := is.New(t)
					// Accepted, serve would answer until the context ends, and run
					// would return nil.
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					defer cancel()
					var out, logs syncBuffer
					args := append(slices.Clone(command), "--"+setting.flag+"="+value)
					err := run(ctx, args, env("NATS_URL", s.ClientURL()), &out, &logs)
					is.True(err != nil)                                                                                   // refused
					saysFirst(t, "the error", err.Error(), fmt.Sprintf("%s (%s) %q: ", setting.flag, setting.env, value)) // naming the setting and the value
					oneLine(t, err)                                                                                       // in one line
					_, served := logLine(logs.String(), "serving")
					is.True(!served) // never serving
				})
			}
		}
	}
	// The environment variable is refused the same way.
	is := is.New(t)
	_, _, err := runOp(env("NATS_URL", s.ClientURL(), "BROKER_SUBJECT", ">"))
	is.True(err != nil) // refused
	saysFirst(t, "the error", err.Error(), `subject (BROKER_SUBJECT) ">": not a subject the broker may use: holds a wildcard`)
}

func TestProcessorWithoutTheConfigurationBucketsPermissionsServesByItsOwnSettingsAndSaysWhatToGrant(t *testing.T) {
	t.Parallel() // waits out the 5 s attempt to open the configuration bucket
	is := is.New(t)
	roles := leastRoles
	roles.processor.publish = slices.DeleteFunc(slices.Clone(processorRole.publish), func(p string) bool { return strings.Contains(p, "gl_broker_config") })
	is.Equal(len(roles.processor.publish), len(processorRole.publish)-6) // the configuration bucket's six taken away
	s, _ := secRoleServer(t, roles)
	gw := natstest.Connect(t, s, nats.UserInfo("gateway", "gateway-pw"))

	r := startProgram(t, secUser(s, "broker"))
	note := r.awaitWithin(t, 20*time.Second, "running by this replica's own pools and settings: open the fleet's configuration bucket \"gl_broker_config\": context deadline exceeded; the server refused a request (nats: permissions violation: Permissions Violation for Publish to \"$JS.API.STREAM.INFO.KV_gl_broker_config\"): grant the permissions in docs/security.md (Least privilege), or set BROKER_CONFIG_SOURCE=local")
	is.Equal(note["level"], "WARN")              // one warning naming what to grant
	r.await(t, "serving")                        // and it serves
	is.True(awaitAnswer(t, gw, "/azure/") != "") // by its own pools
	is.NoErr(r.stop())
}

func TestProcessorWithConfigSourceLocalNeedsNoConfigurationBucket(t *testing.T) {
	is := is.New(t)
	roles := leastRoles
	roles.processor.publish = slices.DeleteFunc(slices.Clone(processorRole.publish), func(p string) bool { return strings.Contains(p, "gl_broker_config") })
	s, v := secRoleServer(t, roles)
	gw := natstest.Connect(t, s, nats.UserInfo("gateway", "gateway-pw"))

	r := startProgram(t, secUser(s, "broker"), "--config-source", "local")
	r.await(t, "serving")
	is.True(awaitAnswer(t, gw, "/azure/") != "") // serves at once
	is.NoErr(r.stop())
	is.Equal(v.subjects(), []string(nil)) // and never asked for the configuration bucket
}
