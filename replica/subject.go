package replica

import (
	"errors"
	"slices"
	"strings"
	"unicode"
)

// CheckSubject refuses a subject a replica must not listen or publish on:
// one with a wildcard, which would take every matching request on the
// server ($JS.API's included) or hear every matching message; one in
// NATS's own $ namespace ($JS, $KV, $SYS); an empty token; white space or
// a control character, which break the protocol line. The error quotes
// nothing, so that the caller names the setting and its value.
func CheckSubject(subject string) error {
	switch {
	case subject == "":
		return errors.New("empty")
	case strings.IndexFunc(subject, func(r rune) bool {
		return unicode.IsSpace(r) || unicode.IsControl(r) || r == unicode.ReplacementChar
	}) >= 0:
		return errors.New("holds white space, a control character or a byte that is not UTF-8")
	case strings.ContainsAny(subject, "*>"):
		return errors.New("holds a wildcard (* or >), which would take requests and messages meant for others, NATS's own APIs included")
	case strings.HasPrefix(subject, "$"):
		return errors.New("starts with $, which NATS keeps for its own APIs ($JS, $KV, $SYS)")
	case slices.Contains(strings.Split(subject, "."), ""):
		return errors.New("has an empty token: a leading, trailing or double dot")
	}
	return nil
}
