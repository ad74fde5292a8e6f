// Package flagenv reads settings that are each a flag and an environment
// variable: a flag wins over its variable, and the variable over the
// built-in default. A bad value, from either, is one line naming it.
package flagenv

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
)

// Set is the settings of one command.
type Set struct {
	fs     *flag.FlagSet
	getenv func(string) string
	err    error             // the first bad environment value
	envs   map[string]string // each flag's variable
}

// New returns an empty set for the command name, reading variables with
// getenv.
func New(name string, getenv func(string) string) *Set {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned as one line; -h prints usage itself
	return &Set{fs: fs, getenv: getenv, envs: map[string]string{}}
}

// Var registers v under flag name and environment variable env ("" for
// none). The flag is registered before the variable is applied, so -h
// shows the built-in default and never a secret from the environment.
func (s *Set) Var(v flag.Value, name, env, usage string) {
	if env != "" {
		usage += " (env " + env + ")"
	}
	s.fs.Var(v, name, usage)
	s.envs[name] = env
	if e := s.getenv(env); env != "" && e != "" {
		if err := v.Set(e); err != nil && s.err == nil {
			s.err = fmt.Errorf("environment variable %s=%q: %w", env, e, err)
		}
	}
}

// String registers a string setting with default def.
func (s *Set) String(p *string, name, env, def, usage string) {
	*p = def
	s.Var((*stringValue)(p), name, env, usage)
}

// Int registers a whole number from lo to hi with default def.
func (s *Set) Int(p *int, name, env string, def, lo, hi int, usage string) {
	*p = def
	s.Var(&intValue{p: p, lo: lo, hi: hi}, name, env, usage)
}

// Bool registers a boolean setting, false by default.
func (s *Set) Bool(p *bool, name, env string, usage string) {
	s.Var((*boolValue)(p), name, env, usage)
}

// Float registers a number from lo to hi with default def.
func (s *Set) Float(p *float64, name, env string, def, lo, hi float64, usage string) {
	*p = def
	s.Var(&floatValue{p: p, lo: lo, hi: hi}, name, env, usage)
}

// Duration registers a Go duration from lo to hi with default def.
func (s *Set) Duration(p *time.Duration, name, env string, def, lo, hi time.Duration, usage string) {
	*p = def
	s.Var(&durationValue{p: p, lo: lo, hi: hi}, name, env, usage)
}

// Parse reads args, which hold flags only. -h prints usage, a line, then
// the settings, to stdout and gives flag.ErrHelp.
func (s *Set) Parse(args []string, usage string, stdout io.Writer) error {
	operands, err := s.ParseOperands(args, usage, stdout)
	if err == nil && len(operands) > 0 {
		return fmt.Errorf("unexpected argument %q", operands[0])
	}
	return err
}

// ParseOperands reads args, in which operands may stand before, between
// or after the flags (as in `broker disable /azure/gpt4/ --for 30m`), and
// after "--" only operands. It returns the operands in order. -h prints
// usage, a line, then the settings, to stdout and gives flag.ErrHelp.
func (s *Set) ParseOperands(args []string, usage string, stdout io.Writer) ([]string, error) {
	if s.err != nil {
		return nil, s.err
	}
	var operands []string
	for {
		err := s.fs.Parse(args)
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(stdout, usage)
			s.fs.SetOutput(stdout)
			s.fs.PrintDefaults()
		}
		if err != nil {
			return nil, err
		}
		rest := s.fs.Args()
		if len(rest) == 0 {
			return operands, nil
		}
		// The flag package stops at the first operand, and after "--".
		if i := len(args) - len(rest) - 1; i >= 0 && args[i] == "--" {
			return append(operands, rest...), nil
		}
		operands = append(operands, rest[0])
		args = rest[1:]
	}
}

type stringValue string

func (v *stringValue) Set(s string) error { *v = stringValue(s); return nil }
func (v *stringValue) String() string     { return string(*v) }

type boolValue bool

func (v *boolValue) Set(s string) error {
	b, err := strconv.ParseBool(s)
	if err != nil {
		return errors.New("not true or false")
	}
	*v = boolValue(b)
	return nil
}
func (v *boolValue) String() string   { return strconv.FormatBool(bool(*v)) }
func (v *boolValue) IsBoolFlag() bool { return true }

type intValue struct {
	p      *int
	lo, hi int
}

func (v *intValue) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil || n < v.lo || n > v.hi {
		return fmt.Errorf("not a whole number from %d to %d", v.lo, v.hi)
	}
	*v.p = n
	return nil
}

func (v *intValue) String() string {
	if v == nil || v.p == nil {
		return "0"
	}
	return strconv.Itoa(*v.p)
}

type floatValue struct {
	p      *float64
	lo, hi float64
}

func (v *floatValue) Set(s string) error {
	f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || math.IsNaN(f) || f < v.lo || f > v.hi {
		return fmt.Errorf("not a number from %v to %v", v.lo, v.hi)
	}
	*v.p = f
	return nil
}

func (v *floatValue) String() string {
	if v == nil || v.p == nil {
		return "0"
	}
	return strconv.FormatFloat(*v.p, 'f', -1, 64)
}

type durationValue struct {
	p      *time.Duration
	lo, hi time.Duration
}

func (v *durationValue) Set(s string) error {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil || d < v.lo || d > v.hi {
		return fmt.Errorf("not a duration from %v to %v, such as 2m or 90s", v.lo, v.hi)
	}
	*v.p = d
	return nil
}

func (v *durationValue) String() string {
	if v == nil || v.p == nil {
		return "0s"
	}
	return v.p.String()
}

// Has reports whether the set has the flag name.
func (s *Set) Has(name string) bool { return s.fs.Lookup(name) != nil }

// Given reports whether setting name was given, by its flag or its
// variable, rather than left at its default.
func (s *Set) Given(name string) bool {
	given := false
	s.fs.Visit(func(f *flag.Flag) { given = given || f.Name == name })
	env := s.envs[name]
	return given || (env != "" && s.getenv(env) != "")
}

// Env is the variable of setting name; "" when it has none.
func (s *Set) Env(name string) string { return s.envs[name] }
