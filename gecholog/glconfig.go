package gecholog

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"

	"github.com/gecholog/broker/broker"
)

// Problem is one thing in a gl_config.json that keeps gecholog from routing
// the pools through the broker, or that makes it do so badly; or, as
// advice, one that only turns off an extra.
type Problem struct {
	// Field is where the problem is: a JSON path such as
	// request.processors[0][1].modifier, or routers for a router that is
	// missing from the list.
	Field string
	// Fix says what to change and why.
	Fix string
	// Advice is true when the broker routes and fails over as well
	// without the fix, and only an extra is off, such as honouring the
	// upstream's Retry-After. A file with nothing but advice works.
	Advice bool
}

// String is the problem as one line: the field, a colon and the fix,
// after "advice: " for advice.
func (p Problem) String() string {
	if p.Advice {
		return "advice: " + p.Field + ": " + p.Fix
	}
	return p.Field + ": " + p.Fix
}

// Wiring is how a broker is wired to gecholog, as far as a gl_config.json
// can get it wrong.
type Wiring struct {
	// Subject is the subject the broker serves processor calls on: the
	// service_bus_topic of its request and response processor entries.
	Subject string
	// LoggerSubject is the subject of gecholog's transaction log the
	// broker reads (service_bus.topic_exact_logger); "" leaves it
	// unchecked. Only pools choosing by latency or headroom read it.
	LoggerSubject string
	// RetryAfter says the broker honours the upstream's Retry-After, so a
	// response processor without inbound_headers gets advice to add it.
	RetryAfter bool
	// SessionHeader is the header the broker reads gecholog's session id
	// from (DefaultSessionHeader when ""), which the file's
	// session_id_header must name for pools with "affinity": "session".
	SessionHeader string
}

// maxGLConfig bounds what CheckGLConfigFile reads: a gl_config.json is
// tens of kilobytes even with hundreds of routers.
const maxGLConfig = 16 << 20

// CheckGLConfigFile checks the gl_config.json at path as CheckGLConfig
// does, advising inbound_headers for Retry-After. The error is for a file
// that cannot be checked: unreadable, too large, not JSON.
func CheckGLConfigFile(path string, pools []broker.Pool, w Wiring) ([]Problem, error) {
	f, err := os.Open(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err // the caller names the file
		}
		return nil, fmt.Errorf("cannot read it: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxGLConfig+1))
	if err != nil {
		return nil, fmt.Errorf("cannot read it: %w", err)
	}
	if len(data) > maxGLConfig {
		return nil, fmt.Errorf("larger than %d bytes; is it gecholog's gl_config.json?", maxGLConfig)
	}
	// The failure policy honours the upstream's Retry-After, which gecholog
	// passes to a response processor only in inbound_headers.
	w.RetryAfter = true
	return CheckGLConfig(bytes.NewReader(data), pools, w)
}

// CheckGLConfig reads a gecholog gl_config.json from r and reports every way
// it fails to route pools through a broker wired as w: a pool ingress or
// router that is no gecholog router, an invalid router path, and a missing or
// miswired request or response processor entry on w.Subject. Extras the
// file leaves off are advice, a Problem with Advice set, since the broker
// routes and fails over without them: inbound_headers for a response
// processor when w.RetryAfter, a transaction log on another subject
// than w.LoggerSubject when a pool chooses by latency or headroom, and,
// for pools with affinity, a request processor without ingress_headers
// or a session_id_header other than w.SessionHeader.
//
// ${NAME} placeholders are read as they are: gecholog replaces them from its
// own environment, which the check cannot see.
//
// The error is for a file that cannot be checked at all: unreadable, not
// JSON, or not a JSON object. Anything else is a Problem: first the shape of
// the file and its router paths, then the pools, then the broker's request
// and response processor entries.
func CheckGLConfig(r io.Reader, pools []broker.Pool, w Wiring) ([]Problem, error) {
	subject, retryAfter := w.Subject, w.RetryAfter
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, errors.New("the file is empty: it should be gecholog's gl_config.json")
	}
	var doc any
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, syntaxError(data, err)
	}
	top, ok := doc.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("not a gl_config.json: the file holds %s, not an object", kind(doc))
	}

	var c checker
	routers, haveRouters := c.routers(top)
	request, requestRead := c.processors(top, "request")
	response, responseRead := c.processors(top, "response")

	if haveRouters {
		c.pools(pools, routers)
	}
	all := slices.Concat(request, response)
	mine := c.onSubject("request", request, requestRead, subject, all,
		"add the broker as a request processor (modifier true, async false, gl_path in input_fields_include and output_fields_write, timeout 50); without it gecholog never asks the broker to choose a router")
	c.requestProcessor(mine)
	inputs := "gl_path and egress_status_code"
	if retryAfter {
		inputs = "gl_path, egress_status_code and inbound_headers"
	}
	// A missing response processor is an error, not advice: without it no
	// failure reaches the broker.
	c.responseProcessor(c.onSubject("response", response, responseRead, subject, all,
		"add the broker as a response processor (async true, "+inputs+" in input_fields_include, timeout 50); without it no failure reaches the broker and failed routers are never taken out"), retryAfter)
	c.logger(top, pools, w.LoggerSubject)
	c.affinity(top, mine, pools, w.SessionHeader)
	return c.problems, nil
}

// logger advises when a pool chooses by what gecholog's transaction log
// says and gecholog logs elsewhere than the broker reads: those pools then
// choose at random, and the broker says only that the log is silent.
func (c *checker) logger(top map[string]any, pools []broker.Pool, want string) {
	var readers []string
	for _, p := range pools {
		if p.NeedsTransactionLog() {
			readers = append(readers, fmt.Sprintf("%s (%s)", p.Ingress, p.StrategyName()))
		}
	}
	if want == "" || len(readers) == 0 {
		return
	}
	const field = "service_bus.topic_exact_logger"
	bus, _ := top["service_bus"].(map[string]any)
	got, ok := bus["topic_exact_logger"].(string)
	switch {
	case !ok || got == "":
		c.advise(field, "missing: set it to %q, the subject the broker reads gecholog's transaction log on; without it pools %s choose at random", want, strings.Join(readers, ", "))
	case strings.Contains(got, "${"):
		// gecholog fills the placeholder in; only the result can be checked.
	case got != want:
		c.advise(field, "%q, but the broker reads gecholog's transaction log on %q: run the broker with BROKER_LOGGER_SUBJECT=%s (-logger-subject); until then pools %s choose at random", got, want, got, strings.Join(readers, ", "))
	}
}

// syntaxError says where the JSON breaks, as an editor counts lines.
func syntaxError(data []byte, err error) error {
	var se *json.SyntaxError
	if !errors.As(err, &se) || se.Offset < 1 {
		return fmt.Errorf("not valid JSON: %w", err)
	}
	if strings.Contains(se.Error(), "unexpected end") {
		// The offset is the end of the file, not where the fault is.
		return errors.New("not valid JSON: the file ends before the JSON is complete; is a ] or } missing?")
	}
	i := int(se.Offset) - 1 // the byte the decoder stopped at
	line := 1 + bytes.Count(data[:i], []byte("\n"))
	col := i - bytes.LastIndexByte(data[:i], '\n')
	hint := ""
	if data[i] == '$' {
		// gecholog substitutes ${NAME} in the raw text before it parses the
		// file, so an unquoted placeholder is legal for gecholog; this check
		// reads the file as it is and cannot know the value.
		hint = " (an unquoted ${NAME} placeholder: gecholog fills it in before parsing, but this check reads the file as it is; write the value to check the file)"
	}
	return fmt.Errorf("not valid JSON at line %d, column %d: %v%s", line, col, err, hint)
}

// kind names what a JSON value is, to say what was found instead of what
// was expected.
func kind(v any) string {
	switch v := v.(type) {
	case map[string]any:
		return "an object"
	case []any:
		return "a list"
	case string:
		return "a string"
	case float64:
		return "a number"
	case bool:
		return fmt.Sprint(v)
	case nil:
		return "null"
	}
	return fmt.Sprintf("%T", v)
}

// checker collects problems in the order it finds them.
type checker struct {
	problems []Problem
}

func (c *checker) add(field, format string, args ...any) {
	c.problems = append(c.problems, Problem{Field: field, Fix: fmt.Sprintf(format, args...)})
}

// advise adds advice: a fix that only turns an extra on.
func (c *checker) advise(field, format string, args ...any) {
	c.problems = append(c.problems, Problem{Field: field, Fix: fmt.Sprintf(format, args...), Advice: true})
}

// routers returns the router paths as written, and whether the file has a
// list of routers at all; without one, every pool router would be reported
// missing, which says nothing the one problem does not.
func (c *checker) routers(top map[string]any) ([]string, bool) {
	v, ok := top["routers"]
	if !ok {
		c.add("routers", "missing: add the list of gecholog routers, each {\"path\", \"ingress\", \"outbound\"}, with every pool ingress and router among them")
		return nil, false
	}
	list, ok := v.([]any)
	if !ok {
		c.add("routers", "%s, not a list: write [{\"path\": \"/azure/\", \"ingress\": {...}, \"outbound\": {...}}, ...]", kind(v))
		return nil, false
	}
	var paths []string
	for i, e := range list {
		at := fmt.Sprintf("routers[%d]", i)
		r, ok := e.(map[string]any)
		if !ok {
			c.add(at, "%s, not a router object: write {\"path\": \"/azure/\", \"ingress\": {...}, \"outbound\": {...}}", kind(e))
			continue
		}
		for _, f := range []string{"ingress", "outbound"} {
			if v, ok := r[f]; ok {
				if _, obj := v.(map[string]any); !obj {
					c.add(at+"."+f, "%s, not an object: gecholog reads the router's %s settings from it", kind(v), f)
				}
			}
		}
		p, ok := r["path"].(string)
		switch {
		case !ok:
			c.add(at+".path", "missing or not a string: give the router a path such as \"/azure/gpt4/\"")
			continue
		case strings.Contains(p, "${"):
			// gecholog fills the placeholder in; only the result can be checked.
		case !broker.ValidPath(p):
			c.add(at+".path", "%q is not a router path: start and end it with / and use only letters, digits and / (e.g. \"/azure/gpt4/\")", p)
		}
		paths = append(paths, p)
	}
	return paths, true
}

// pools reports pool paths that gecholog has no router for.
func (c *checker) pools(pools []broker.Pool, routers []string) {
	for _, p := range pools {
		if !slices.Contains(routers, p.Ingress) {
			c.add("routers", "no router %q, the ingress of a pool: add it; clients call the ingress, so without it the pool gets no calls", p.Ingress)
		}
		for _, r := range p.Routers {
			if !slices.Contains(routers, r.Path) {
				c.add("routers", "no router %q, which pool %q chooses: add it; when the broker names a router gecholog lacks, gecholog silently keeps the call on the ingress %q, so the pool does not spread or fail over", r.Path, p.Ingress, p.Ingress)
			}
		}
	}
}
