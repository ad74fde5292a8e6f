package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
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

	"github.com/gecholog/broker/internal/standin"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/replica"
	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
)

// The security tests' harness: the credentials of each way of
// authenticating (an nkey, an operator's user, a TLS certificate
// authority); gecholog's calls and a network fault; and the least
// privilege the README grants, as roles on a server that records every
// permission it refuses, with the processor and the tools driven through
// everything they do on the bus.

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

// secState is router's state as `broker status --json` shows it, or the
// empty string when status has no row for router.
func secState(t *testing.T, getenv func(string) string, router string) string {
	t.Helper()
	state, _ := jsonRow(statusJSON(t, getenv), router)["state"].(string)
	return state
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
	return pub, string(s), writeFile(t, "user.nk", append(s, '\n'))
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
	return writeFile(t, name+".creds", creds), string(s)
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
		caFile:   writeFile(t, "ca.pem", caPEM),
		certFile: writeFile(t, "client-cert.pem", cliPEM),
		keyFile:  writeFile(t, "client-key.pem", keyPEM(cliKey)),
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
	// calls and the digests of the calls gecholog logged that it read
	// (broker.stats.gl_broker; in a fleet of more than 12, its counts
	// through the relay, broker.relay.gl_broker), and reads those calls
	// (coburn.gl.logger, in the queue group broker-log). _INBOX.> receives the
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
			"broker.relay.gl_broker",
			"$JS.API.STREAM.INFO.KV_gl_broker_config",
			"$JS.API.STREAM.CREATE.KV_gl_broker_config",
			"$JS.API.CONSUMER.CREATE.KV_gl_broker_config.>",
			"$JS.API.CONSUMER.DELETE.KV_gl_broker_config.>",
			"$JS.API.DIRECT.GET.KV_gl_broker_config.>",
			"$KV.gl_broker_config.>",
			// The budgets' counts (secPools gives a router a budget).
			"$JS.API.STREAM.INFO.KV_gl_broker_usage",
			"$JS.API.STREAM.CREATE.KV_gl_broker_usage",
			"$JS.API.DIRECT.GET.KV_gl_broker_usage.>",
			"$KV.gl_broker_usage.>",
		},
		subscribe: []string{"coburn.gl.broker broker", "coburn.gl.logger", "broker.news.gl_broker", "broker.stats.gl_broker", "broker.relay.gl_broker", "_INBOX.>"},
		responses: true,
	}
	// viewerRole is `broker status`'s: it opens the bucket without
	// creating it, reads every key with a consumer, and hears the
	// replicas' counts (broker.stats.gl_broker) for the fleet's figures.
	viewerRole = secRole{
		publish: []string{
			"$JS.API.STREAM.INFO.KV_gl_broker",
			"$JS.API.CONSUMER.CREATE.KV_gl_broker.>",
			"$JS.API.CONSUMER.DELETE.KV_gl_broker.>",
			"$JS.API.STREAM.INFO.KV_gl_broker_config",
			"$JS.API.CONSUMER.CREATE.KV_gl_broker_config.>",
			"$JS.API.CONSUMER.DELETE.KV_gl_broker_config.>",
			"$JS.API.STREAM.INFO.KV_gl_broker_usage",
			"$JS.API.DIRECT.GET.KV_gl_broker_usage.>",
		},
		subscribe: []string{"broker.stats.gl_broker", "_INBOX.>"},
	}
	// adminRole adds reading a key and writing it, for disable and enable,
	// and telling the replicas of it at once. Nothing more to hear which
	// replicas hold the write: they say so on broker.stats.gl_broker, which
	// the viewer hears already.
	adminRole = secRole{
		publish:   append(slices.Clip(viewerRole.publish), "$JS.API.DIRECT.GET.KV_gl_broker.>", "$KV.gl_broker.>", "broker.news.gl_broker", "$KV.gl_broker_config.>"),
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
		if p == fleetOnly {
			continue
		}
		less := r
		less.publish = minus(r.publish, i)
		out = append(out, secLess{"publish " + p, p, less})
	}
	for i, p := range r.subscribe {
		if p == fleetOnly {
			continue
		}
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

// fleetOnly is the permission only a fleet of more than 12 replicas uses
// (the relay of their counts), which one processor here cannot show it
// needs: replica's TestAServerThatRefusesTheRelaySubjectIsSaidOnceAndTheWordsGoStraight
// shows what 13 do without it.
var fleetOnly = replica.RelaySubject("gl_broker")

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

func (v *secViolations) Noticef(string, ...any) {}

func (v *secViolations) Warnf(f string, a ...any) { v.log(f, a...) }

func (v *secViolations) Fatalf(f string, a ...any) { v.log(f, a...) }

func (v *secViolations) Errorf(f string, a ...any) { v.log(f, a...) }

func (v *secViolations) Debugf(string, ...any) {}

func (v *secViolations) Tracef(string, ...any) {}

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

// secPools is the original's pool with a budget on /azure/gpt4/, so that
// a replica counts its calls in the budgets' bucket: a pools file in
// t's directory.
func secPools(t *testing.T) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "budget-pools.json")
	if err := os.WriteFile(f, []byte(`{"pools":[{"ingress":"/azure/","routers":[{"path":"/azure/gpt35turbo/"},
		{"path":"/azure/gpt4/","budget":{"tokens_per_minute":1000000000}},{"path":"/azure/dud/"}]}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// secBudgetUser is secUser for a replica serving secPools.
func secBudgetUser(t *testing.T, s *server.Server, user string) func(string) string {
	pools := secPools(t)
	base := secUser(s, user)
	return func(k string) string {
		if k == "BROKER_POOLS" {
			return pools
		}
		return base(k)
	}
}

// usageCounted reports whether the budgets' bucket holds a count of
// /azure/gpt4/, as read by nc.
func usageCounted(nc *nats.Conn) bool {
	js, err := jetstream.New(nc)
	if err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	b, err := js.KeyValue(ctx, "gl_broker_usage")
	if err != nil {
		return false
	}
	_, err = b.Get(ctx, "/azure/gpt4/")
	return err == nil
}

// withoutCreating is role without the permissions the README says the
// processor needs only to create a missing bucket.
func withoutCreating(role secRole) secRole {
	role.publish = slices.DeleteFunc(slices.Clone(role.publish), func(p string) bool {
		return p == "$JS.API.INFO" || p == "$JS.API.STREAM.CREATE.KV_gl_broker" || p == "$JS.API.STREAM.CREATE.KV_gl_broker_config" ||
			p == "$JS.API.STREAM.CREATE.KV_gl_broker_usage"
	})
	return role
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
		rs = append(rs, startProgram(t, secBudgetUser(t, s, "broker"), "--id", id))
		if !until(everyReplica("serving"), id+" serving") {
			return "", false
		}
	}
	if !until(answers, "an answer") {
		return "", false
	}
	// gecholog logs the call, and every replica hears it.
	tx := standin.Transaction(standin.Finished{Ingress: "/azure/", Router: "/azure/gpt4/", Latency: time.Millisecond})
	if err := gw.Publish("coburn.gl.logger", tx); err != nil {
		t.Fatalf("transaction log: %v", err)
	}
	if !until(everyReplica("hearing gecholog's transaction log"), "the transaction log heard by every replica") {
		return "", false
	}
	// The call counts against /azure/gpt4/'s budget, in the budgets' bucket.
	if !until(func() bool { return usageCounted(gw) }, "the budget's count in its bucket") {
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
	if _, _, err := runOp(secUser(s, "gateway"), "disable", "/azure/gpt4/", "--for", "1m"); err != nil {
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
	pools := filepath.Join(t.TempDir(), "pools.json")
	if err := os.WriteFile(pools, []byte(`{"pools":[{"ingress":"/azure/","routers":[{"path":"/azure/gpt4/","weight":3,"budget":{"tokens_per_minute":1000000000}},{"path":"/azure/dud/","weight":1}]}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range commands {
		args = slices.Clone(args)
		if i := slices.Index(args, "@pools"); i >= 0 {
			args[i] = pools // a pools file to set
		}
		// With the pools file, so that status shows its budget's counts.
		withPools := func(k string) string {
			if k == "BROKER_POOLS" {
				return pools
			}
			return secUser(s, user)(k)
		}
		out, errs, err := runOpIn(ctx, withPools, args...)
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
		_, _, err := runOp(secUser(s, "gateway"), "disable", "/azure/dud/", "--for", "1h", "--reason", "seed")
		return err
	}
	if disable() == nil {
		return
	}
	secSeedBuckets(t, s)
	if err := disable(); err != nil {
		t.Fatal(err)
	}
}

// secSeedBuckets makes the buckets as a replica with every permission
// makes them, the budgets' one with a count of /azure/gpt4/: tools never
// make a bucket.
func secSeedBuckets(t *testing.T, s *server.Server) {
	t.Helper()
	r := startProgram(t, secBudgetUser(t, s, "gateway"))
	gw := natstest.Connect(t, s, nats.UserInfo("gateway", "gateway-pw"))
	awaitAnswer(t, gw, "/azure/")
	if err := gw.Publish("coburn.gl.logger", standin.Transaction(standin.Finished{Ingress: "/azure/", Router: "/azure/gpt4/", Latency: time.Millisecond})); err != nil {
		t.Fatal(err)
	}
	natstest.Eventually(t, 10*time.Second, func() bool { return usageCounted(gw) }, "the budget's count in its bucket")
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
}

var (
	// statusCommands are what a viewer runs.
	statusCommands = [][]string{{"status"}, {"status", "--json"}, {"config", "show"}, {"config", "history"}}
	// adminCommands are what an admin runs: status reads the seeded
	// record, enable removes one; config set and rollback write the
	// fleet's configuration, which the seeding replica created.
	adminCommands = [][]string{{"status"}, {"disable", "/azure/gpt4/", "--for", "1m"}, {"enable", "/azure/gpt4/"}, {"enable", "/azure/dud/"},
		{"config", "set", "@pools"}, {"config", "diff"}, {"config", "rollback"}}
)
