// Package natsconn turns the NATS connection settings every broker command
// shares (servers, token, user and password, credentials, nkey, TLS) into
// nats.go options, and keeps their secrets out of what is shown.
package natsconn

import (
	"cmp"
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/gecholog/broker/internal/safetext"
)

// Settings say where the NATS server is and how to authenticate, as the
// NATS tools name them (NATS_URL, NATS_TOKEN, NATS_CREDS, ...).
type Settings struct {
	Servers  string // URLs, comma separated
	Token    string
	User     string
	Password string
	Creds    string // credentials file (JWT and seed)
	NKey     string // nkey seed file
	TLSCert  string // client certificate file
	TLSKey   string // client key file
	TLSCA    string // the CA that signed the server's certificate
}

// Check refuses combinations NATS cannot use, naming the settings.
func (s Settings) Check() error {
	switch {
	case (s.TLSCert == "") != (s.TLSKey == ""):
		return errors.New("tlscert and tlskey: give both or neither")
	case s.User != "" && s.Token != "":
		return errors.New("user and token: NATS takes one of them; unset NATS_TOKEN or NATS_USER")
	}
	return checkServers(s.Servers)
}

// Options are the nats.go options for authentication and TLS. Files are
// checked here, so that a wrong path stops a command with one clear line
// instead of failing every reconnect.
func (s Settings) Options() ([]nats.Option, error) {
	for _, f := range []struct{ setting, path string }{
		{"creds", s.Creds}, {"nkey", s.NKey}, {"tlscert", s.TLSCert}, {"tlskey", s.TLSKey}, {"tlsca", s.TLSCA},
	} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			return nil, fmt.Errorf("%s: %w", f.setting, err)
		}
	}
	var opts []nats.Option
	if s.Token != "" {
		opts = append(opts, nats.Token(s.Token))
	}
	if s.User != "" {
		opts = append(opts, nats.UserInfo(s.User, s.Password))
	}
	if s.Creds != "" {
		opts = append(opts, nats.UserCredentials(s.Creds))
	}
	if s.NKey != "" {
		o, err := nats.NkeyOptionFromSeed(s.NKey)
		if err != nil {
			return nil, fmt.Errorf("nkey %s: %w", s.NKey, err)
		}
		opts = append(opts, o)
	}
	if s.TLSCert != "" {
		opts = append(opts, nats.ClientCert(s.TLSCert, s.TLSKey))
	}
	if s.TLSCA != "" {
		opts = append(opts, nats.RootCAs(s.TLSCA))
	}
	return opts, nil
}

// Redacted is Servers without credentials, for logs and output.
func (s Settings) Redacted() string { return Redact(s.Servers) }

// Hint names the settings to look at for a failed connection.
func Hint(err error) string {
	var tlsErr *tls.CertificateVerificationError
	switch {
	case errors.Is(err, nats.ErrAuthorization):
		return "the server refused the credentials: check NATS_TOKEN (or NATS_USER and NATS_PASSWORD, NATS_CREDS, NATS_NKEY)"
	case errors.As(err, &tlsErr), strings.Contains(err.Error(), "tls:"), strings.Contains(err.Error(), "x509:"),
		errors.Is(err, nats.ErrSecureConnRequired), errors.Is(err, nats.ErrSecureConnWanted):
		return "TLS failed: check NATS_CA (the CA that signed the server's certificate), NATS_CERT and NATS_KEY, and a tls:// URL"
	}
	return "is the server running and reachable? set NATS_URL or GECHOLOG_HOST"
}

// Scrub keeps secrets out of an error: nats.go and net/url quote server
// URLs, which may carry a token or password, in their messages. It also
// keeps the error on one line, and errors.Is still sees what it wraps. An
// error about a server list that cannot be read unambiguously says only
// that, since any part of the list, in any quoting, may be a secret.
func (s Settings) Scrub(err error) error {
	if err == nil {
		return nil
	}
	if problem := listProblem(splitServers(s.Servers)); problem != "" {
		return scrubbed{msg: fmt.Sprintf("NATS_URL %s: %s", Redact(s.Servers), problem), err: err}
	}
	msg := err.Error()
	for _, secret := range s.secrets() {
		msg = strings.ReplaceAll(msg, secret, "[redacted]")
	}
	msg = OneLine(msg)
	for _, secret := range s.secrets() {
		msg = strings.ReplaceAll(msg, OneLine(secret), "[redacted]")
	}
	// Secrets out first: escaping a secret's odd character would hide the
	// secret from the search and show it, escaped.
	return scrubbed{msg: OneLine(msg), err: err}
}

type scrubbed struct {
	msg string
	err error
}

func (e scrubbed) Error() string { return e.msg }
func (e scrubbed) Unwrap() error { return e.err }

// secrets are the settings' secrets as a message may quote them: the
// token, the password and the user information of the server URLs, each
// as written, decoded and encoded; longest first, so that a part never
// breaks up a whole. Shorter than 3 bytes, a secret would only mangle the
// message.
func (s Settings) secrets() []string {
	var out []string
	add := func(secrets ...string) {
		for _, secret := range secrets {
			if len(secret) < 3 {
				continue
			}
			quoted := strconv.Quote(secret)
			out = append(out, secret, quoted[1:len(quoted)-1],
				url.User(secret).String(), url.QueryEscape(secret), url.PathEscape(secret))
			if dec, err := url.PathUnescape(secret); err == nil {
				out = append(out, dec)
			}
		}
	}
	add(s.Token, s.Password)
	for _, p := range splitServers(s.Servers) {
		if u := splitURL(p); u.hasUser {
			user, pass, _ := strings.Cut(u.userinfo, ":")
			add(u.userinfo, user, pass)
		}
	}
	slices.SortFunc(out, func(a, b string) int { return len(b) - len(a) })
	return slices.Compact(out)
}

var (
	// schemeRE is a scheme nats.go connects with. Any other is shown as
	// little as user information: in "user:pass@host" a password that
	// starts with // makes the user name a scheme.
	schemeRE = regexp.MustCompile(`^(?i:nats|tls|ws|wss)$`)
	// hostPortRE is a host name or IPv4 address, or an IPv6 address in
	// brackets, with an optional port: what may follow a URL's last @.
	hostPortRE = regexp.MustCompile(`^([A-Za-z0-9._~-]*|\[[0-9A-Fa-f:.]+(%25[A-Za-z0-9._~-]+)?\])(:[0-9]{0,5})?$`)
	// pathRE is a path shown as it is (websocket URLs may have one).
	pathRE = regexp.MustCompile(`^[A-Za-z0-9/._~-]*$`)
	// userinfoRE is what net/url takes as user information.
	userinfoRE = regexp.MustCompile(`^([A-Za-z0-9\-._:~!$&'()*+,;=@]|%[0-9A-Fa-f]{2})*$`)
)

// serverURL is one URL of a server list, cut without net/url, which
// returns a URL it refuses unchanged, credentials and all, in its error,
// and ends the user information at the first /, ? or # (so that a
// password holding one leaks the rest into the host and path).
type serverURL struct {
	scheme   string // "" when the URL has none (nats.go adds nats://)
	hasUser  bool
	userinfo string // everything between the scheme and the last @
	host     string // host[:port]
	tail     string // from the first /, ? or # after the host
}

func splitURL(u string) serverURL {
	var s serverURL
	rest := u
	if scheme, r, ok := strings.Cut(u, "://"); ok {
		s.scheme, rest = scheme, r
	}
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		s.hasUser, s.userinfo, rest = true, rest[:at], rest[at+1:]
	}
	s.host = rest
	if j := strings.IndexAny(rest, "/?#"); j >= 0 {
		s.host, s.tail = rest[:j], rest[j:]
	}
	return s
}

// problem says why the URL cannot be read unambiguously, quoting none of
// it; "" when it can.
func (u serverURL) problem() string {
	switch {
	case u.scheme != "" && !schemeRE.MatchString(u.scheme):
		return "what stands before :// is not nats, tls, ws or wss"
	case strings.ContainsAny(u.userinfo, "/?#"):
		return "the user, password or token in it holds /, ? or #: write them as %2F, %3F and %23"
	case !userinfoRE.MatchString(u.userinfo):
		return "the user, password or token in it holds a character a URL cannot (a space, a control character, a non-ASCII letter, or a % that starts no %XX): percent-encode it, or set NATS_TOKEN, or NATS_USER and NATS_PASSWORD, instead"
	case !hostPortRE.MatchString(u.host):
		return "what follows the scheme (and the last @) is not a host name or address with an optional numeric port"
	}
	if _, err := url.Parse(cmp.Or(u.scheme, "nats") + "://" + u.host + u.tail); err != nil {
		return "what follows the host does not parse as a URL path"
	}
	return ""
}

// shown is the URL without its user information, query and fragment.
func (u serverURL) shown() string {
	s := u.host
	if u.hasUser {
		s = "[redacted]@" + s
	}
	if u.scheme != "" {
		s = u.scheme + "://" + s
	}
	path := u.tail
	if j := strings.IndexAny(path, "?#"); j >= 0 {
		path = path[:j]
	}
	if pathRE.MatchString(path) {
		s += path
	} else {
		s += "/[redacted]"
	}
	if len(path) < len(u.tail) {
		s += "?[redacted]"
	}
	return s
}

// splitServers splits a server list as nats.go does.
func splitServers(servers string) []string {
	var out []string
	for u := range strings.SplitSeq(servers, ",") {
		if u = strings.TrimSpace(u); u != "" {
			out = append(out, u)
		}
	}
	return out
}

// listProblem says why the list cannot be read unambiguously; "" when it
// can. nats.go splits it at every comma, also one inside a password: in
// a list, a URL with credentials must have its scheme, so that a comma in
// a password shows as a URL without one.
func listProblem(parts []string) string {
	for i, p := range parts {
		u := splitURL(p)
		problem := u.problem()
		if problem == "" && len(parts) > 1 && u.hasUser && u.scheme == "" {
			problem = "in a list, a URL with credentials needs its scheme (nats://...)"
		}
		if problem != "" {
			if len(parts) > 1 {
				problem = fmt.Sprintf("URL %d of %d: %s (and a comma in a user, password or token is written %%2C)", i+1, len(parts), problem)
			}
			return problem
		}
	}
	return ""
}

// checkServers refuses a server list that cannot be read unambiguously,
// so that nats.go never quotes it in an error and no part of a secret is
// ever taken for a host.
func checkServers(servers string) error {
	if problem := listProblem(splitServers(servers)); problem != "" {
		return fmt.Errorf("NATS_URL %s: %s", Redact(servers), problem)
	}
	return nil
}

// Redact removes credentials from server URLs before they are shown, and
// fails closed: whatever may be user information is masked, whichever
// characters the secret holds. A list that cannot be read unambiguously
// shows only its first scheme, when it has one, and the host after its
// last @.
func Redact(servers string) string {
	parts := splitServers(servers)
	if listProblem(parts) == "" {
		for i, p := range parts {
			parts[i] = splitURL(p).shown()
		}
		return strings.Join(parts, ",")
	}
	if !strings.Contains(servers, "@") {
		// Nothing in it can be user information.
		return OneLine(strings.TrimSpace(servers))
	}
	shown := "[redacted]"
	if scheme, _, ok := strings.Cut(strings.TrimSpace(servers), "://"); ok && schemeRE.MatchString(scheme) {
		shown = scheme + "://" + shown
	}
	// What follows the last @ is the host, as nats.go reads it too.
	host := servers[strings.LastIndex(servers, "@")+1:]
	if j := strings.IndexAny(host, "/?#"); j >= 0 {
		host = host[:j]
	}
	return shown + "@" + OneLine(strings.TrimSpace(host))
}

// OneLine puts text on one line: records may be written by hand, and a
// reason with a tab or a newline must not break a table or a log line,
// nor a control or bidirectional character spoof a terminal; it is
// safetext.Line, which the status page uses too.
func OneLine(s string) string { return safetext.Line(s) }
