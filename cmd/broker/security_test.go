package main

// Security, proven end to end on embedded nats-servers on loopback: every
// way of authenticating the broker offers, each against a server that
// requires it; secrets kept out of everything the program prints; and the
// least NATS permissions the processor and the operator commands need,
// each shown to be enough and each shown to be needed.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matryer/is"
	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/gecholog/broker/internal/gechologtest"
	"github.com/gecholog/broker/internal/natstest"
)

// secAsk makes gecholog's request-context call for the /azure/ ingress.
func secAsk(t *testing.T, nc *nats.Conn) []byte {
	t.Helper()
	m, err := nc.Request("coburn.gl.broker", []byte(`{"gl_path":"/azure/"}`), 2*time.Second)
	if err != nil {
		t.Fatalf("request context: %v", err)
	}
	return m.Data
}

// secReport makes gecholog's response-context call: the client got status
// from router.
func secReport(t *testing.T, nc *nats.Conn, router string, status int) {
	t.Helper()
	msg := fmt.Sprintf(`{"gl_path":%q,"egress_status_code":%d}`, router, status)
	if _, err := nc.Request("coburn.gl.broker", []byte(msg), 2*time.Second); err != nil {
		t.Fatalf("response context: %v", err)
	}
}

// secKick closes the connections of the replicas with ids on s, as a
// network fault would; the replicas must reconnect by themselves. It
// returns how many it closed.
func secKick(t *testing.T, s *server.Server, ids ...string) int {
	t.Helper()
	cz, err := s.Connz(&server.ConnzOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, c := range cz.Conns {
		if slices.Contains(ids, strings.TrimPrefix(c.Name, "gecholog-broker ")) {
			if err := s.DisconnectClientByID(c.Cid); err != nil {
				t.Fatal(err)
			}
			n++
		}
	}
	return n
}

// secOp runs an operator command to completion, or until ctx ends.
func secOp(ctx context.Context, getenv func(string) string, args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var out, errs syncBuffer
	err = run(ctx, args, getenv, &out, &errs)
	return out.String(), errs.String(), err
}

// secState is router's state as `broker status --json` shows it.
func secState(t *testing.T, getenv func(string) string, router string) string {
	t.Helper()
	out, errs, err := secOp(context.Background(), getenv, "status", "--json")
	if err != nil {
		t.Fatalf("status --json: %v\n%s", err, errs)
	}
	var rows []struct{ Router, State string }
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("status --json printed %q: %v", out, err)
	}
	for _, r := range rows {
		if r.Router == router {
			return r.State
		}
	}
	return ""
}

func secWrite(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// secNkey makes a user nkey and writes its seed to a file, as nsc and
// `nk -gen user` do.
func secNkey(t *testing.T) (public, seed, seedFile string) {
	t.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	s, _ := kp.Seed()
	return pub, string(s), secWrite(t, "user.nk", append(s, '\n'))
}

// secOperator is a server in operator (JWT) mode: an operator, a system
// account and one account with JetStream, as nsc sets them up.
type secOperator struct {
	option  natstest.Option
	account nkeys.KeyPair
}

func newSecOperator(t *testing.T) secOperator {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	okp, err := nkeys.CreateOperator()
	must(err)
	opub, _ := okp.PublicKey()
	skp, err := nkeys.CreateAccount()
	must(err)
	spub, _ := skp.PublicKey()
	akp, err := nkeys.CreateAccount()
	must(err)
	apub, _ := akp.PublicKey()

	oc := jwt.NewOperatorClaims(opub)
	oc.Name = "gecholog-operator"
	oc.SystemAccount = spub
	ojwt, err := oc.Encode(okp)
	must(err)
	op, err := jwt.DecodeOperatorClaims(ojwt)
	must(err)

	sc := jwt.NewAccountClaims(spub)
	sc.Name = "SYS"
	sjwt, err := sc.Encode(okp)
	must(err)
	ac := jwt.NewAccountClaims(apub)
	ac.Name = "GECHOLOG"
	// An account has JetStream only when its claims give it limits.
	ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
	ajwt, err := ac.Encode(okp)
	must(err)

	resolver := &server.MemAccResolver{}
	must(resolver.Store(spub, sjwt))
	must(resolver.Store(apub, ajwt))
	return secOperator{
		option: func(o *server.Options) {
			o.TrustedOperators = []*jwt.OperatorClaims{op}
			o.AccountResolver = resolver
			o.SystemAccount = spub
		},
		account: akp,
	}
}

// user signs a user of the account and writes its credentials file, as
// `nsc generate creds` does; it returns the file and the user's seed.
func (o secOperator) user(t *testing.T, name string) (credsFile, seed string) {
	t.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	uc := jwt.NewUserClaims(pub)
	uc.Name = name
	ujwt, err := uc.Encode(o.account)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := kp.Seed()
	creds, err := jwt.FormatUserConfig(ujwt, s)
	if err != nil {
		t.Fatal(err)
	}
	return secWrite(t, name+".creds", creds), string(s)
}

// secPKI is a certificate authority with a server certificate for
// 127.0.0.1 and a client certificate, written as PEM files.
type secPKI struct {
	caFile, certFile, keyFile string // the client's
	server                    *tls.Config
	client                    *tls.Config // for the test's own connection
}

func newSecPKI(t *testing.T) secPKI {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	serial := int64(0)
	issue := func(tmpl *x509.Certificate, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey, []byte) {
		t.Helper()
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		must(err)
		serial++
		tmpl.SerialNumber = big.NewInt(serial)
		tmpl.NotBefore = time.Now().Add(-time.Minute)
		tmpl.NotAfter = time.Now().Add(time.Hour)
		if parent == nil {
			parent, parentKey = tmpl, key
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
		must(err)
		cert, err := x509.ParseCertificate(der)
		must(err)
		return cert, key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	}
	keyPEM := func(k *ecdsa.PrivateKey) []byte {
		der, err := x509.MarshalECPrivateKey(k)
		must(err)
		return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	}
	ca, caKey, caPEM := issue(&x509.Certificate{
		Subject: pkix.Name{CommonName: "gecholog test CA"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}, nil, nil)
	_, srvKey, srvPEM := issue(&x509.Certificate{
		Subject: pkix.Name{CommonName: "nats"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, ca, caKey)
	_, cliKey, cliPEM := issue(&x509.Certificate{
		Subject:  pkix.Name{CommonName: "broker"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, ca, caKey)

	pool := x509.NewCertPool()
	pool.AddCert(ca)
	srvCert, err := tls.X509KeyPair(srvPEM, keyPEM(srvKey))
	must(err)
	cliCert, err := tls.X509KeyPair(cliPEM, keyPEM(cliKey))
	must(err)
	return secPKI{
		caFile:   secWrite(t, "ca.pem", caPEM),
		certFile: secWrite(t, "client-cert.pem", cliPEM),
		keyFile:  secWrite(t, "client-key.pem", keyPEM(cliKey)),
		server: &tls.Config{
			Certificates: []tls.Certificate{srvCert}, ClientCAs: pool,
			ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12,
		},
		client: &tls.Config{Certificates: []tls.Certificate{cliCert}, RootCAs: pool, MinVersion: tls.VersionTLS12},
	}
}

// option makes the server require TLS with a client certificate its CA
// signed.
func (p secPKI) option() natstest.Option {
	return func(o *server.Options) {
		o.TLS, o.TLSVerify, o.TLSTimeout = true, true, 5
		o.TLSConfig = p.server
	}
}

// tlsURL is the server's URL with the scheme that asks for TLS.
func tlsURL(s *server.Server) string { return strings.Replace(s.ClientURL(), "nats://", "tls://", 1) }

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

			r := startProgram(t, good, "--id", "replica-1")
			serving := r.await(t, "serving")
			is.Equal(serving["ttl_mode"], "ttl")                                   // the shared bucket, not local mode
			is.True(bytes.HasPrefix(secAsk(t, gw), []byte(`{"gl_path":"/azure/`))) // a pool router

			// The operator's tools, with the processor's settings: each one's
			// effect is seen by the replica, through the bucket, and by status.
			out, errs, err := secOp(context.Background(), good, "disable", "/azure/gpt4/", "--for", "1h", "--by", "alice")
			is.NoErr(err)                                                                                // disable
			is.True(strings.HasPrefix(out, "disabled /azure/gpt4/ on every replica for 1h0m0s, until ")) // confirmed
			is.Equal(errs, "")
			r.await(t, "router disabled", "router", "/azure/gpt4/", "manual", "true", "by", "alice")
			is.Equal(secState(t, good, "/azure/gpt4/"), "disabled") // status
			out, _, err = secOp(context.Background(), good, "enable", "/azure/gpt4/")
			is.NoErr(err) // enable
			is.True(strings.HasPrefix(out, "enabled /azure/gpt4/ on every replica; removed the manual disable by alice"))
			r.await(t, "router enabled", "router", "/azure/gpt4/")
			is.Equal(secState(t, good, "/azure/gpt4/"), "enabled")
			is.NoErr(r.stop())

			for _, rc := range tc.refused {
				t.Run(rc.name, func(t *testing.T) {
					is := is.New(t)
					refused := env(append([]string{"NATS_URL", url}, rc.env...)...)
					r := startProgram(t, refused)
					line := r.await(t, "cannot connect to NATS; retrying every second")
					is.True(strings.Contains(fmt.Sprint(line["error"], " ", line["hint"]), rc.says)) // says why
					is.NoErr(r.stop())                                                               // cancelled while retrying: a clean stop
					_, served := logLine(r.logs.String(), "serving")
					is.True(!served)

					for _, args := range [][]string{{"status"}, {"disable", "/azure/gpt4/"}, {"enable", "/azure/gpt4/"}} {
						out, _, err := secOp(context.Background(), refused, args...)
						is.True(err != nil)                                                   // the tool is refused too
						is.True(strings.HasPrefix(err.Error(), "cannot connect to NATS at ")) // at connecting
						is.True(strings.Contains(err.Error(), rc.says))                       // saying why
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
			is.True(bytes.HasPrefix(secAsk(t, gw), []byte(`{"gl_path":"/azure/`)))
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
				out, errs, err := secOp(context.Background(), getenv, args...)
				is.NoErr(err) // the command works with these credentials
				keep(out, errs)
			}
			r.await(t, "router disabled", "router", "/azure/gpt4/")
			is.NoErr(r.stop())
			keep(r.out.String(), r.logs.String())

			// Usage of every command, printed with the secret in the environment.
			for _, cmd := range []string{"serve", "status", "disable", "enable"} {
				out, errs, err := secOp(context.Background(), getenv, cmd, "-h")
				is.NoErr(err)
				is.True(strings.Contains(out, "NATS_URL")) // the usage was printed
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
				out, errs, err := secOp(context.Background(), getenv, "status")
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
				out, errs, err := secOp(context.Background(), env("NATS_URL", tc.url), args...)
				is.True(err != nil)                                              // refused
				is.True(strings.HasPrefix(err.Error(), "NATS_URL "))             // naming the setting
				is.True(strings.Contains(err.Error(), "[redacted]@127.0.0.1:4")) // and the host
				is.True(strings.Contains(err.Error(), tc.says))                  // saying how to fix it
				is.True(!strings.Contains(err.Error(), "\n"))                    // in one line
				is.True(!strings.Contains(out+errs+err.Error(), tc.secret))      // never the secret
			}
		})
	}
}

// secRole is what one NATS user may do: the least a broker command needs,
// as the README's "Least privilege" section gives it for nats-server.conf.
// The subjects follow from the defaults: BROKER_SUBJECT coburn.gl.broker,
// BROKER_QUEUE broker and BROKER_BUCKET gl_broker, whose stream is
// KV_gl_broker.
type secRole struct {
	publish, subscribe []string
	responses          bool // allow_responses: one reply to each request received
}

var (
	// processorRole is a replica's: it answers gecholog's calls in its
	// queue group, creates the bucket when it is missing ($JS.API.INFO and
	// STREAM.CREATE), watches it with an ordered consumer (CONSUMER.CREATE,
	// and CONSUMER.DELETE when it re-watches after a reconnect), reads a key
	// before each compare-and-set write and every key after a reconnect
	// (DIRECT.GET), writes keys ($KV.gl_broker.>), tells the other
	// replicas of its changes (broker.news.gl_broker) and its counts of
	// calls (broker.stats.gl_broker), and hears every call gecholog logs
	// (coburn.gl.logger, outside the queue group). _INBOX.> receives the
	// JetStream API's replies and the watcher's messages.
	processorRole = secRole{
		publish: []string{
			"$JS.API.INFO",
			"$JS.API.STREAM.INFO.KV_gl_broker",
			"$JS.API.STREAM.CREATE.KV_gl_broker",
			"$JS.API.CONSUMER.CREATE.KV_gl_broker.>",
			"$JS.API.CONSUMER.DELETE.KV_gl_broker.>",
			"$JS.API.DIRECT.GET.KV_gl_broker.>",
			"$KV.gl_broker.>",
			"broker.news.gl_broker",
			"broker.stats.gl_broker",
		},
		subscribe: []string{"coburn.gl.broker broker", "coburn.gl.logger", "broker.news.gl_broker", "broker.stats.gl_broker", "_INBOX.>"},
		responses: true,
	}
	// viewerRole is `broker status`'s: it opens the bucket without
	// creating it, lists the keys with a consumer and reads each, and
	// hears the replicas' counts (broker.stats.gl_broker) for the fleet's
	// figures.
	viewerRole = secRole{
		publish: []string{
			"$JS.API.STREAM.INFO.KV_gl_broker",
			"$JS.API.CONSUMER.CREATE.KV_gl_broker.>",
			"$JS.API.CONSUMER.DELETE.KV_gl_broker.>",
			"$JS.API.DIRECT.GET.KV_gl_broker.>",
		},
		subscribe: []string{"broker.stats.gl_broker", "_INBOX.>"},
	}
	// adminRole adds writing keys, for disable and enable, and telling the
	// replicas of it at once.
	adminRole = secRole{
		publish:   append(slices.Clip(viewerRole.publish), "$KV.gl_broker.>", "broker.news.gl_broker"),
		subscribe: viewerRole.subscribe,
	}
)

// permissions are the role's as the server takes them.
func (r secRole) permissions() *server.Permissions {
	allow := func(subjects []string) *server.SubjectPermission {
		if len(subjects) == 0 {
			// The server reads an empty subscribe allow list as no limit.
			return &server.SubjectPermission{Deny: []string{">"}}
		}
		return &server.SubjectPermission{Allow: slices.Clone(subjects)}
	}
	p := &server.Permissions{Publish: allow(r.publish), Subscribe: allow(r.subscribe)}
	if r.responses {
		p.Response = &server.ResponsePermission{
			MaxMsgs: server.DEFAULT_ALLOW_RESPONSE_MAX_MSGS, Expires: server.DEFAULT_ALLOW_RESPONSE_EXPIRATION,
		}
	}
	return p
}

// secLess is a role with one permission taken away.
type secLess struct {
	taken   string // how the permission reads
	refused string // the subjects the server then refuses, as a filter
	role    secRole
}

// withoutEach is the role once without each of its permissions.
func (r secRole) withoutEach() []secLess {
	minus := func(list []string, i int) []string { return slices.Delete(slices.Clone(list), i, i+1) }
	var out []secLess
	for i, p := range r.publish {
		less := r
		less.publish = minus(r.publish, i)
		out = append(out, secLess{"publish " + p, p, less})
	}
	for i, p := range r.subscribe {
		less := r
		less.subscribe = minus(r.subscribe, i)
		out = append(out, secLess{"subscribe " + p, strings.Fields(p)[0], less}) // the subject, without the queue group
	}
	if r.responses {
		less := r
		less.responses = false
		out = append(out, secLess{"allow_responses", "_INBOX.>", less}) // gecholog's reply subjects
	}
	return out
}

// secViolations records the permission violations a server logs.
type secViolations struct {
	mu    sync.Mutex
	lines []string
	seen  chan struct{} // closed at the first
}

var violationRE = regexp.MustCompile(`(Publish|Subscription) Violation - Subject "([^"]*)"`)

func (v *secViolations) log(format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	if !violationRE.MatchString(line) {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.lines) == 0 {
		close(v.seen)
	}
	v.lines = append(v.lines, line)
}

func (v *secViolations) Noticef(string, ...any)    {}
func (v *secViolations) Warnf(f string, a ...any)  { v.log(f, a...) }
func (v *secViolations) Fatalf(f string, a ...any) { v.log(f, a...) }
func (v *secViolations) Errorf(f string, a ...any) { v.log(f, a...) }
func (v *secViolations) Debugf(string, ...any)     {}
func (v *secViolations) Tracef(string, ...any)     {}

// subjects are the subjects refused so far.
func (v *secViolations) subjects() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	var out []string
	for _, l := range v.lines {
		out = append(out, violationRE.FindStringSubmatch(l)[2])
	}
	return out
}

// secRoles are the roles of the users of secRoleServer.
type secRoles struct{ processor, admin, viewer secRole }

var leastRoles = secRoles{processorRole, adminRole, viewerRole}

// users are broker, broker-admin and broker-viewer with the roles, and
// "gateway", which may do anything; each has the password "<user>-pw".
func (roles secRoles) users() []*server.User {
	return []*server.User{
		{Username: "broker", Password: "broker-pw", Permissions: roles.processor.permissions()},
		{Username: "broker-admin", Password: "broker-admin-pw", Permissions: roles.admin.permissions()},
		{Username: "broker-viewer", Password: "broker-viewer-pw", Permissions: roles.viewer.permissions()},
		{Username: "gateway", Password: "gateway-pw"},
	}
}

// secRoleServer starts a server with the users of roles and records the
// violations it logs.
func secRoleServer(t *testing.T, roles secRoles) (*server.Server, *secViolations) {
	t.Helper()
	s := natstest.Start(t, func(o *server.Options) { o.Users = roles.users() })
	v := &secViolations{seen: make(chan struct{})}
	s.SetLoggerV2(v, false, false, false)
	return s, v
}

// secUser is the settings of a user of secRoleServer.
func secUser(s *server.Server, user string) func(string) string {
	return env("NATS_URL", s.ClientURL(), "NATS_USER", user, "NATS_PASSWORD", user+"-pw")
}

// driveProcessor takes two replicas running as user "broker" through
// everything the processor does on the bus: create the bucket and watch
// it, tell each other their counts of calls, answer gecholog's calls,
// hear gecholog's transaction log, share a failure report's disable
// through the bucket, reconnect and watch again, obey an operator's
// disable, and stop. It stops early, returning false, at the first permission
// violation, and returns the replicas' logs.
func driveProcessor(t *testing.T, s *server.Server, v *secViolations) (logs string, ok bool) {
	t.Helper()
	until := func(cond func() bool, what string) bool {
		t.Helper()
		met := false
		natstest.Eventually(t, 10*time.Second, func() bool {
			select {
			case <-v.seen:
				return true
			default:
			}
			met = cond()
			return met
		}, "%s; refused: %v", what, v.subjects())
		return met
	}
	gw := natstest.Connect(t, s, nats.UserInfo("gateway", "gateway-pw"))
	answers := func() bool {
		m, err := gw.Request("coburn.gl.broker", []byte(`{"gl_path":"/azure/"}`), 500*time.Millisecond)
		return err == nil && bytes.HasPrefix(m.Data, []byte(`{"gl_path":"/azure/`))
	}
	var rs []*program
	everyReplica := func(msg string, attrs ...string) func() bool {
		return func() bool {
			for _, r := range rs {
				if logged(r.logs.String(), msg, attrs...) == nil {
					return false
				}
			}
			return true
		}
	}
	for _, id := range []string{"replica-1", "replica-2"} {
		rs = append(rs, startProgram(t, secUser(s, "broker"), "--id", id))
		if !until(everyReplica("serving"), id+" serving") {
			return "", false
		}
	}
	if !until(answers, "an answer") {
		return "", false
	}
	// gecholog logs the call, and every replica hears it.
	tx := gechologtest.Transaction(gechologtest.Finished{Ingress: "/azure/", Router: "/azure/gpt4/", Latency: time.Millisecond})
	if err := gw.Publish("coburn.gl.logger", tx); err != nil {
		t.Fatalf("transaction log: %v", err)
	}
	if !until(everyReplica("hearing gecholog's transaction log"), "the transaction log heard by every replica") {
		return "", false
	}
	if _, err := gw.Request("coburn.gl.broker", []byte(`{"gl_path":"/azure/dud/","egress_status_code":502}`), time.Second); err != nil {
		t.Fatalf("response context: %v", err)
	}
	if !until(everyReplica("router disabled", "router", "/azure/dud/"), "the dud disabled on every replica") {
		return "", false
	}
	secKick(t, s, "replica-1", "replica-2")
	if !until(everyReplica("reconnected to NATS"), "every replica reconnected") || !until(answers, "an answer after the reconnect") {
		return "", false
	}
	// The watchers work again after the reconnect: an operator's disable
	// reaches every replica.
	if _, _, err := secOp(context.Background(), secUser(s, "gateway"), "disable", "/azure/gpt4/", "--for", "1m"); err != nil {
		t.Fatalf("disable as gateway: %v", err)
	}
	if !until(everyReplica("router disabled", "router", "/azure/gpt4/"), "the operator's disable on every replica") {
		return "", false
	}
	for _, r := range rs {
		if err := r.stop(); err != nil {
			t.Fatal(err)
		}
		logs += r.logs.String()
	}
	return logs, true
}

// driveTools runs commands as user with /azure/dud/ disabled in the
// bucket, so that status reads a record. It stops early, returning false,
// at the first permission violation.
func driveTools(t *testing.T, s *server.Server, v *secViolations, user string, commands [][]string) bool {
	t.Helper()
	secSeedBucket(t, s)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-v.seen: // the refused request would only time out
			cancel()
		case <-ctx.Done():
		}
	}()
	for _, args := range commands {
		out, errs, err := secOp(ctx, secUser(s, user), args...)
		if ctx.Err() != nil {
			return false
		}
		if err != nil {
			select { // a refusal the server has not logged yet
			case <-v.seen:
				return false
			case <-time.After(5 * time.Second):
			}
			t.Fatalf("%s as %s: %v\n%s%s", strings.Join(args, " "), user, err, out, errs)
		}
		if strings.Contains(errs, "NATS error") {
			t.Fatalf("%s as %s logged an error:\n%s", strings.Join(args, " "), user, errs)
		}
	}
	return true
}

// secSeedBucket makes sure the bucket exists, as a replica creates it,
// and disables /azure/dud/ in it, as the gateway's unlimited user.
func secSeedBucket(t *testing.T, s *server.Server) {
	t.Helper()
	disable := func() error {
		_, _, err := secOp(context.Background(), secUser(s, "gateway"), "disable", "/azure/dud/", "--for", "1h", "--reason", "seed")
		return err
	}
	if disable() == nil {
		return
	}
	r := startProgram(t, secUser(s, "gateway")) // tools never create the bucket
	r.await(t, "serving")
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	if err := disable(); err != nil {
		t.Fatal(err)
	}
}

var (
	// statusCommands are what a viewer runs.
	statusCommands = [][]string{{"status"}, {"status", "--json"}}
	// adminCommands are what an admin runs: status reads the seeded
	// record, enable removes one.
	adminCommands = [][]string{{"status"}, {"disable", "/azure/gpt4/", "--for", "1m"}, {"enable", "/azure/gpt4/"}, {"enable", "/azure/dud/"}}
)

func TestProcessorAndToolsWorkWithLeastPrivilege(t *testing.T) {
	is := is.New(t)
	s, v := secRoleServer(t, leastRoles)

	logs, ok := driveProcessor(t, s, v)
	is.True(ok)                                                                   // serves, shares disables, reconnects and stops
	is.True(!strings.Contains(logs, `"level":"ERROR"`))                           // without an error on the way
	is.Equal(secState(t, secUser(s, "broker-viewer"), "/azure/dud/"), "disabled") // the failure report's key, read by the viewer
	is.True(driveTools(t, s, v, "broker-viewer", statusCommands))
	is.True(driveTools(t, s, v, "broker-admin", adminCommands))
	is.Equal(v.subjects(), []string(nil))                                        // no request was refused
	is.Equal(secState(t, secUser(s, "broker-viewer"), "/azure/dud/"), "enabled") // the admin's enable landed
}

func TestAViewerWithLeastPrivilegeCannotDisable(t *testing.T) {
	is := is.New(t)
	s, v := secRoleServer(t, leastRoles)
	is.True(!driveTools(t, s, v, "broker-viewer", [][]string{{"disable", "/azure/gpt4/"}}))
	is.Equal(v.subjects(), []string{"$KV.gl_broker./azure/gpt4/"}) // the write, and only the write
}

// withoutCreating is role without the two permissions the README says the
// processor needs only to create a missing bucket.
func withoutCreating(role secRole) secRole {
	role.publish = slices.DeleteFunc(slices.Clone(role.publish), func(p string) bool {
		return p == "$JS.API.INFO" || p == "$JS.API.STREAM.CREATE.KV_gl_broker"
	})
	return role
}

func TestProcessorWithoutCreatePermissionsServesFromABucketCreatedBeforehand(t *testing.T) {
	is := is.New(t)
	roles := leastRoles
	roles.processor = withoutCreating(processorRole)
	is.Equal(len(roles.processor.publish), len(processorRole.publish)-2) // both taken away
	s, v := secRoleServer(t, roles)
	// Created beforehand, as a replica with every permission creates it.
	creator := startProgram(t, secUser(s, "gateway"), "--id", "creator")
	creator.await(t, "serving")
	is.NoErr(creator.stop())

	logs, ok := driveProcessor(t, s, v)
	is.Equal(v.subjects(), []string(nil))               // no request was refused
	is.True(ok)                                         // serves, shares disables, reconnects and stops
	is.True(!strings.Contains(logs, `"level":"ERROR"`)) // without an error on the way
}

func TestProcessorWithoutCreatePermissionsNamesTheRefusalWhenTheBucketIsMissing(t *testing.T) {
	t.Parallel() // waits out a 5 s attempt to open the bucket
	is := is.New(t)
	roles := leastRoles
	roles.processor = withoutCreating(processorRole)
	s, v := secRoleServer(t, roles)
	gw := natstest.Connect(t, s, nats.UserInfo("gateway", "gateway-pw"))

	r := startProgram(t, secUser(s, "broker"))
	refused := r.await(t, "NATS error")
	is.Equal(refused["level"], "ERROR")
	is.True(strings.Contains(fmt.Sprint(refused["error"]), `Permissions Violation for Publish to "$JS.API.INFO"`)) // names what it may not do
	r.await(t, "cannot open the router health bucket; retrying", "bucket", "gl_broker")                            // and which bucket it cannot open
	_, served := logLine(r.logs.String(), "serving")
	is.True(!served) // no serving without the bucket: not in local mode either
	_, err := gw.Request("coburn.gl.broker", []byte(`{"gl_path":"/azure/"}`), 2*time.Second)
	is.True(errors.Is(err, nats.ErrNoResponders))                    // no replica takes gecholog's calls
	is.NoErr(r.stop())                                               // cancelled while retrying: a clean stop
	is.Equal(slices.Compact(v.subjects()), []string{"$JS.API.INFO"}) // the first step of creating it, and nothing else
	js, err := jetstream.New(gw)
	is.NoErr(err)
	_, err = js.KeyValue(context.Background(), "gl_broker")
	is.True(errors.Is(err, jetstream.ErrBucketNotFound)) // still missing
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
	is.True(strings.HasPrefix(err.Error(), `subscribe to "coburn.gl.broker" in queue group "broker": `))
	is.True(strings.HasSuffix(err.Error(), `: allow the broker's NATS user to subscribe to "coburn.gl.broker broker"`)) // saying which permission to grant
	is.True(!strings.Contains(err.Error(), "\n"))                                                                       // in one line
	_, served := logLine(logs.String(), "serving")
	is.True(!served)
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

// readmeLeastPrivilege is the nats-server.conf block of README.md's "Least
// privilege" section: the first fenced block after the heading, which
// must come before the next heading.
func readmeLeastPrivilege(t *testing.T) string {
	t.Helper()
	const readme, heading = "../../README.md", "### Least privilege\n"
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
	o, err := server.ProcessConfigFile(secWrite(t, "nats-server.conf", []byte(conf)))
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
	is.Equal(len(viewerConf), strings.Count(conf, "\n")-1) // one line is marked: $KV.gl_broker.>, writing keys
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
			is.True(err != nil)                                                                              // refused
			is.True(strings.HasPrefix(err.Error(), fmt.Sprintf("embedded-listen %q: off loopback", listen))) // naming the setting
			is.True(strings.Contains(err.Error(), "set NATS_TOKEN"))                                         // and how to fix it
			is.True(!strings.Contains(err.Error(), "\n"))                                                    // in one line
			_, started := logLine(logs.String(), "embedded nats-server with JetStream started")
			is.True(!started)
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
			is.True(bytes.HasPrefix(m.Data, []byte(`{"gl_path":"/azure/`))) // and is answered
			if tc.token != "" {
				_, err := nats.Connect("nats://127.0.0.1:" + port)
				is.True(errors.Is(err, nats.ErrAuthorization)) // without the token, refused
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
					is.True(err != nil)                                                                                    // refused
					is.True(strings.HasPrefix(err.Error(), fmt.Sprintf("%s (%s) %q: ", setting.flag, setting.env, value))) // naming the setting and the value
					is.True(!strings.Contains(err.Error(), "\n"))                                                          // in one line
					_, served := logLine(logs.String(), "serving")
					is.True(!served)
				})
			}
		}
	}
	// The environment variable is refused the same way.
	is := is.New(t)
	_, _, err := secOp(context.Background(), env("NATS_URL", s.ClientURL(), "BROKER_SUBJECT", ">"))
	is.True(err != nil && strings.HasPrefix(err.Error(), `subject (BROKER_SUBJECT) ">": not a subject the broker may use: holds a wildcard`))
}
