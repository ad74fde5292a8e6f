package natsconn_test

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"unicode"

	"github.com/matryer/is"
	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/gecholog/broker/internal/natsconn"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestRedactRemovesCredentialsEvenFromMistypedURLs(t *testing.T) {
	for in, want := range map[string]string{
		"nats://127.0.0.1:4222":                        "nats://127.0.0.1:4222",
		"nats://s3cr3t@127.0.0.1:4222":                 "nats://[redacted]@127.0.0.1:4222",
		"nats://user:pa55@host:4222,tls://tok@h2:4222": "nats://[redacted]@host:4222,tls://[redacted]@h2:4222",
		"nats://user:pa55@host:4x/path":                "nats://[redacted]@host:4x",
		"user:pa55@host":                               "[redacted]@host",
		"nats://us@er:pa@55@host:4222":                 "nats://[redacted]@host:4222",
		"ws://tok@host:80/nats?secret=x#frag":          "ws://[redacted]@host:80/nats?[redacted]",
		// A /, ? or # in a password ends the user information for net/url,
		// which then takes the rest of the secret for the host and path.
		"nats://bob:pa/ssw0rd@127.0.0.1:4222":  "nats://[redacted]@127.0.0.1:4222",
		"nats://bob:pa?ss#w0rd@127.0.0.1:4222": "nats://[redacted]@127.0.0.1:4222",
		"nats://to/k#en@127.0.0.1:4222":        "nats://[redacted]@127.0.0.1:4222",
		// nats.go splits a list at every comma, also one in a password.
		"nats://bob:pa,ssw0rd@127.0.0.1:4222":   "nats://[redacted]@127.0.0.1:4222",
		"nats://bob:pa ss\nw0rd@127.0.0.1:4222": "nats://[redacted]@127.0.0.1:4222",
		"b@d://tok@host:4222":                   "[redacted]@host:4222",
	} {
		is.New(t).Equal(natsconn.Redact(in), want) // in
	}
}

// refusals are server lists Check refuses, one for each of its reasons.
var refusals = []struct{ url, secret, says string }{
	{"nats://bob:pa/ssw0rd@127.0.0.1:4222", "ssw0rd", "holds /, ? or #: write them as %2F, %3F and %23"},
	{"nats://t0k?en#x@127.0.0.1:4222", "t0k", "holds /, ? or #"},
	{"nats://bob:pa ss@127.0.0.1:4222", "pa ss", "percent-encode it"},
	{"nats://bob:pa%zzss@127.0.0.1:4222", "pa%zzss", "a % that starts no %XX"},
	{"nats://s3cr3t,x@127.0.0.1:4222", "s3cr3t", "URL 2 of 2: in a list, a URL with credentials needs its scheme"},
	{"nats://bob:s3cr3t,x@127.0.0.1:4222", "s3cr3t", "URL 1 of 2: what follows the scheme (and the last @) is not a host"},
	{"nats://bob:s3cr3t@127.0.0.1:4x", "s3cr3t", "not a host name or address with an optional numeric port"},
	{"na+ts@x://s3cr3t@127.0.0.1:4222", "s3cr3t", "what stands before :// is not nats, tls, ws or wss"},
}

func TestCheckRefusesAServerListItCannotReadUnambiguouslyQuotingNoSecret(t *testing.T) {
	for _, tc := range refusals {
		t.Run(tc.url, func(t *testing.T) {
			is := is.New(t)
			err := natsconn.Settings{Servers: tc.url}.Check()
			is.True(err != nil)                                             // refused
			is.True(strings.HasPrefix(err.Error(), "NATS_URL "))            // naming the setting
			is.True(strings.Contains(err.Error(), "[redacted]@127.0.0.1:")) // and the host
			is.True(strings.Contains(err.Error(), tc.says))                 // saying how to fix it
			is.True(!strings.Contains(err.Error(), tc.secret))              // and never the secret
		})
	}
	is := is.New(t)
	for _, ok := range []string{
		"", "nats://127.0.0.1:4222", "127.0.0.1", "nats://bob:pa%2Fss%3Fw%230rd@host:4222",
		"nats://u:p@h1:4222, nats://u:p@h2:4222", "tls://[::1]:4222", "ws://host:8080/nats",
		"nats://" + url.UserPassword("b o/b", "p@ss/w?rd#é\n").String() + "@host:4222",
	} {
		is.NoErr(natsconn.Settings{Servers: ok}.Check()) // ok
	}
}

// FuzzRedact builds server lists around generated user names, passwords
// and tokens of any bytes and shows that neither Redact, nor Check's
// refusal, nor Scrub of an error quoting the list shows any of them.
func FuzzRedact(f *testing.F) {
	for _, seed := range [][3]string{
		{"bob", "pa/ssw0rd", "t0k/en"}, {"bob", "pa?ss#w0rd", "to?k#en"}, {"b@b", "p@ss:w0rd@", "@@@@"},
		{"bob", "pa,ssw0rd", "tok,en"}, {"bob", "pa ss\nw0rd", "tö ken\r\n"}, {"bob", "pa%zz%2Fss", "%%%%"},
		{"", "", "nats://x@y"}, {"bo:b", "p:a:s:s", "t:o:k:e:n"}, {"bob", "\x00\xff\xfe", "\u202e"},
	} {
		f.Add(seed[0], seed[1], seed[2])
	}
	// What Redact, Check and Scrub say whatever the secret.
	surrounding := "nats://[redacted]@127.0.0.1:4222 tls:// parse"
	for _, r := range refusals {
		surrounding += " " + natsconn.Settings{Servers: r.url}.Check().Error()
	}
	f.Fuzz(func(t *testing.T, user, password, token string) {
		if len(user)+len(password)+len(token) > 300 {
			t.Skip("secrets of a reasonable length")
		}
		const host = "127.0.0.1:4222"
		lists := []string{
			"nats://" + user + ":" + password + "@" + host,
			"nats://" + token + "@" + host,
			user + ":" + password + "@" + host,
			"nats://" + token + "@" + host + ",nats://" + user + ":" + password + "@" + host,
			"tls://" + url.UserPassword(user, password).String() + "@" + host,
			"nats://" + url.User(token).String() + "@" + host,
		}
		for _, servers := range lists {
			s := natsconn.Settings{Servers: servers}
			shown := []string{natsconn.Redact(servers),
				s.Scrub(fmt.Errorf("parse %q: %s: %s", servers, servers, url.PathEscape(servers))).Error()}
			if err := s.Check(); err != nil {
				shown = append(shown, err.Error())
			}
			for _, text := range shown {
				for _, secret := range []string{user, password, token} {
					leaked(t, text, secret, surrounding)
				}
			}
		}
	})
}

// leaked fails t when text shows secret, or a piece of it between URL
// delimiters, of 4 bytes or more: shorter ones, and those the surrounding
// text holds anyway ("nats", "127.0.0.1", "redacted"), tell nothing; nor
// do white space and delimiters at a piece's ends, which count for none
// of its 4 bytes (nats.go trims white space off a URL, and a comma ends
// one: "   ," is no user but the end of a list's first URL, and "   0"
// the one-byte user "0"). The surrounding text is matched in any case,
// against the piece without those ends:
// "nAts" in ",nAts://" is the scheme of a list's next URL, as nats.go
// reads it, and tells no more than "nats". A secret with a comma is no
// secret whole: the comma ends a URL of the list, so "0,nAts://" is the
// host "0" of one URL and the scheme of the next; its pieces still count.
func leaked(t *testing.T, text, secret, surrounding string) {
	t.Helper()
	delimiter := func(r rune) bool { return strings.ContainsRune("/?#@:,%", r) }
	holds := func(s string) bool { return strings.Contains(strings.ToLower(surrounding), strings.ToLower(s)) }
	pieces := append(strings.FieldsFunc(secret, delimiter), strings.Split(secret, ",")...)
	for _, p := range pieces {
		told := strings.TrimFunc(p, func(r rune) bool { return unicode.IsSpace(r) || delimiter(r) })
		if len(told) < 4 || holds(told) {
			continue
		}
		for _, shown := range []string{p, natsconn.OneLine(p), url.PathEscape(p), url.QueryEscape(p), url.User(p).String()} {
			if len(shown) >= 4 && !holds(shown) && strings.Contains(text, shown) {
				t.Fatalf("%q shows %q of the secret %q", text, shown, secret)
			}
		}
	}
}

func TestScrubKeepsSecretsOutOfErrorsAndKeepsWhatTheyWrap(t *testing.T) {
	is := is.New(t)
	s := natsconn.Settings{Servers: "nats://alice:pa55w0rd@host:4222", Token: "t0ken-s3cr3t", Password: "other-pass"}
	err := s.Scrub(errors.Join(nats.ErrAuthorization, errors.New("parse \"nats://alice:pa55w0rd@host:4222\": t0ken-s3cr3t other-pass\nsecond line")))
	for _, secret := range []string{"pa55w0rd", "alice:", "t0ken-s3cr3t", "other-pass"} {
		is.True(!strings.Contains(err.Error(), secret)) // secret
	}
	is.True(!strings.Contains(err.Error(), "\n"))  // one line
	is.True(errors.Is(err, nats.ErrAuthorization)) // what it wraps still tells
	is.Equal(s.Scrub(nil), nil)
}

func TestCheckRefusesWhatNATSCannotUse(t *testing.T) {
	is := is.New(t)
	is.True(natsconn.Settings{TLSCert: "c"}.Check() != nil)              // a certificate needs its key
	is.True(natsconn.Settings{User: "u", Token: "t"}.Check() != nil)     // one of user and token
	is.NoErr(natsconn.Settings{User: "u", Password: "p"}.Check())        // fine
	_, err := natsconn.Settings{Creds: "/nonexistent/x.creds"}.Options() // a missing file is named
	is.True(err != nil && strings.HasPrefix(err.Error(), "creds:"))      // the error names the creds setting
}
