// Package natsconn turns the NATS connection settings every broker command
// shares (servers, token, user and password, credentials, nkey, TLS) into
// nats.go options, and keeps their secrets out of what is shown.
package natsconn

import (
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"slices"
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
	return nil
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
// keeps the error on one line, and errors.Is still sees what it wraps.
func (s Settings) Scrub(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	secrets := append(userinfo(s.Servers), s.Token, s.Password)
	for _, secret := range secrets {
		if len(secret) >= 3 {
			msg = strings.ReplaceAll(msg, secret, "[redacted]")
		}
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

// userinfo returns the credentials in servers' URLs: the whole user
// information, and its user and password parts. It parses by hand, so that
// a URL net/url refuses still has its secrets found.
func userinfo(servers string) []string {
	var out []string
	for _, u := range strings.Split(servers, ",") {
		u = strings.TrimSpace(u)
		if i := strings.Index(u, "://"); i >= 0 {
			u = u[i+3:]
		}
		if i := strings.IndexAny(u, "/?#"); i >= 0 {
			u = u[:i]
		}
		at := strings.LastIndex(u, "@")
		if at < 0 {
			continue
		}
		info := u[:at]
		user, pass, _ := strings.Cut(info, ":")
		out = append(out, info, user, pass)
	}
	// Longest first, so that a part never breaks up a whole.
	slices.SortFunc(out, func(a, b string) int { return len(b) - len(a) })
	return out
}

// Redact removes credentials from server URLs before they are shown. It
// cuts by hand rather than with net/url, which would return a mistyped URL
// unchanged, credentials and all; nats.go's own redaction keeps a token
// given as the URL's user name.
func Redact(servers string) string {
	parts := strings.Split(servers, ",")
	for i, p := range parts {
		p = strings.TrimSpace(p)
		scheme, rest, ok := strings.Cut(p, "://")
		if !ok {
			scheme, rest = "", p
		}
		host := rest
		tail := ""
		if j := strings.IndexAny(rest, "/?#"); j >= 0 {
			host, tail = rest[:j], rest[j:]
		}
		if at := strings.LastIndex(host, "@"); at >= 0 {
			host = "[redacted]@" + host[at+1:]
		}
		if ok {
			parts[i] = scheme + "://" + host + tail
		} else {
			parts[i] = host + tail
		}
	}
	return strings.Join(parts, ",")
}

// OneLine puts text on one line: records may be written by hand, and a
// reason with a tab or a newline must not break a table or a log line,
// nor a control or bidirectional character spoof a terminal; it is
// safetext.Line, which the status page uses too.
func OneLine(s string) string { return safetext.Line(s) }
