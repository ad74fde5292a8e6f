package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"

	"github.com/gecholog/broker/broker"
)

// honoursRetryAfter makes the check require inbound_headers in the
// response processor's input fields. The failure policy honours the
// upstream's Retry-After header, which gecholog passes to a response
// processor only in inbound_headers, and the shipped gl_config.json gives
// it; a config without it would quietly lose that signal.
const honoursRetryAfter = true

// maxGLConfig bounds what the check reads: a gl_config.json is tens of
// kilobytes even with hundreds of routers.
const maxGLConfig = 16 << 20

// checkCommand is "broker check [gl_config.json]": it prints each way the
// file fails to route the pools through this broker, one line each, and
// fails if there is any.
func checkCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	c, err := parseCheck(args, getenv, stdout)
	if err != nil {
		return err
	}
	problems, err := checkGLConfigFile(c.glConfig, c.pools, c.subject)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("check %s: %w (give its path: broker check PATH, or set BROKER_GL_CONFIG)", c.glConfig, err)
	}
	if err != nil {
		return fmt.Errorf("check %s: %w", c.glConfig, err)
	}
	for _, p := range problems {
		fmt.Fprintln(stdout, p)
	}
	if len(problems) > 0 {
		return fmt.Errorf("check: %s in %s", plural(len(problems), "problem"), c.glConfig)
	}
	routers := 0
	for _, p := range c.pools {
		routers += len(p.Routers)
	}
	fmt.Fprintf(stdout, "%s: ok (%s, %s, subject %s)\n", c.glConfig, plural(len(c.pools), "pool"), plural(routers, "router"), c.subject)
	return nil
}

// parseCheck reads the check command's settings. They use the serve
// command's names and variables, so that "broker check" in the broker's
// container checks what the broker serves. The file's path may come
// before, between or after the flags.
func parseCheck(args []string, getenv func(string) string, stdout io.Writer) (config, error) {
	var c config
	s := newSettings("check", getenv)
	s.string(&c.poolsFile, "pools", "BROKER_POOLS", "", "pools `file` (JSON); default: /azure/ over /azure/gpt35turbo/, /azure/gpt4/ and /azure/dud/")
	s.string(&c.subject, "subject", "BROKER_SUBJECT", "coburn.gl.broker", "`subject` gecholog sends the broker's processor calls to")
	s.string(&c.glConfig, "gl-config", "BROKER_GL_CONFIG", "gl_config.json", "gecholog's gl_config.json `file`; a path given as an argument wins")
	if s.err != nil {
		return c, s.err
	}
	var paths []string
	for rest := args; ; {
		err := s.fs.Parse(rest)
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(stdout, "Usage: broker check [flags] [gl_config.json]")
			fmt.Fprintln(stdout, "Checks that gecholog's gl_config.json routes the pools through the broker; each problem is one line.")
			s.fs.SetOutput(stdout)
			s.fs.PrintDefaults()
		}
		if err != nil {
			return c, err
		}
		if s.fs.NArg() == 0 {
			break
		}
		paths = append(paths, s.fs.Arg(0))
		rest = s.fs.Args()[1:]
	}
	switch len(paths) {
	case 0:
	case 1:
		c.glConfig = paths[0]
	default:
		return c, fmt.Errorf("check: one gl_config.json at a time, not %q and %q", paths[0], paths[1])
	}
	if !subjectRE.MatchString(c.subject) {
		return c, fmt.Errorf("subject %q: not a NATS subject (dot-separated tokens, no spaces)", c.subject)
	}
	c.pools = broker.DefaultPools()
	if c.poolsFile != "" {
		p, err := readPools(c.poolsFile)
		if err != nil {
			return c, fmt.Errorf("pools %s: %w", c.poolsFile, err)
		}
		c.pools = p
	}
	return c, nil
}

// checkAtStartup refuses to serve when gl_config.json (c.glConfig) does not
// route c.pools through this broker. The error is one line with the first
// problem; "broker check" lists them all.
func checkAtStartup(c config) error {
	problems, err := checkGLConfigFile(c.glConfig, c.pools, c.subject)
	switch {
	case err != nil:
		return fmt.Errorf("gl-config %s: %w", c.glConfig, err)
	case len(problems) == 1:
		return fmt.Errorf("gl-config %s: 1 problem: %s", c.glConfig, problems[0])
	case len(problems) > 1:
		return fmt.Errorf("gl-config %s: %d problems: %s (run \"broker check %s\" for all)", c.glConfig, len(problems), problems[0], c.glConfig)
	}
	return nil
}

// checkGLConfigFile checks the file at path. The error is for a file that
// cannot be checked: unreadable, too large, not JSON.
func checkGLConfigFile(path string, pools []broker.Pool, subject string) ([]broker.Problem, error) {
	data, err := readFileAtMost(path, maxGLConfig)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err // the caller names the file
		}
		return nil, fmt.Errorf("cannot read it: %w", err)
	}
	if len(data) > maxGLConfig {
		return nil, fmt.Errorf("larger than %d bytes; is it gecholog's gl_config.json?", maxGLConfig)
	}
	return broker.CheckGLConfig(bytes.NewReader(data), pools, subject, honoursRetryAfter)
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}

// readFileAtMost reads the file at path, or max+1 bytes of it if it is
// larger.
func readFileAtMost(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, max+1))
}
