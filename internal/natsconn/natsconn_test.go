package natsconn_test

import (
	"errors"
	"strings"
	"testing"

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
		"nats://user:pa55@host:4x/path":                "nats://[redacted]@host:4x/path",
		"user:pa55@host":                               "[redacted]@host",
		"nats://us@er:pa@55@host:4222":                 "nats://[redacted]@host:4222",
	} {
		is.New(t).Equal(natsconn.Redact(in), want) // in
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
	is.True(err != nil && strings.HasPrefix(err.Error(), "creds:"))
}
