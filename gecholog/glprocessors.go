package gecholog

import (
	"fmt"
	"math"
	"slices"
	"strings"
)

// The broker's entries among gl_config.json's request and response
// processors: finding them, and what each must say.

// maxRequestTimeout bounds the request processor's timeout. gecholog waits
// that long on every client call when the broker does not answer, so a
// large value turns a broker outage into a latency outage.
const maxRequestTimeout = 1000

// processor is one entry of request.processors or response.processors, with
// the JSON path it was found at. Absent fields hold their zero values, as
// they would for gecholog.
type processor struct {
	at       string
	name     string
	modifier bool
	async    bool
	include  []string
	exclude  []string
	output   []string
	topic    string
	timeout  float64
	// hasTimeout is false when timeout is absent.
	hasTimeout bool
	// bad holds the fields whose type is wrong: they are reported once as
	// such, not again for the value the check then cannot read.
	bad map[string]bool
}

func (p processor) has(field string) bool { return !p.bad[field] }

// processors reads section.processors: a list of layers run in order, each
// a list of processors called in parallel.
//
// ok is false when part of the list could not be read: the broker's entry
// may be in that part, so its absence is not reported on top.
func (c *checker) processors(top map[string]any, section string) (ps []processor, ok bool) {
	v, ok := top[section]
	if !ok {
		return nil, true // no processors; the missing broker entry is reported later
	}
	sec, ok := v.(map[string]any)
	if !ok {
		c.add(section, "%s, not an object: write {\"processors\": [[...], ...]}", kind(v))
		return nil, false
	}
	at := section + ".processors"
	v, ok = sec["processors"]
	if !ok || v == nil {
		return nil, true
	}
	layers, ok := v.([]any)
	if !ok {
		c.add(at, "%s, not a list of layers: write [[{processor}, ...], ...]; each layer is a list of processors called in parallel, and layers run in order", kind(v))
		return nil, false
	}
	readable := true
	for i, l := range layers {
		layerAt := fmt.Sprintf("%s[%d]", at, i)
		layer, ok := l.([]any)
		if !ok {
			c.add(layerAt, "%s, not a layer: a layer is a list of processors called in parallel; wrap it in [ ]", kind(l))
			readable = false
			continue
		}
		for j, e := range layer {
			entryAt := fmt.Sprintf("%s[%d]", layerAt, j)
			m, ok := e.(map[string]any)
			if !ok {
				c.add(entryAt, "%s, not a processor object with name, modifier, required, async, input_fields_include, input_fields_exclude, output_fields_write, service_bus_topic and timeout", kind(e))
				readable = false
				continue
			}
			p := c.processor(entryAt, m)
			if !p.has("service_bus_topic") {
				readable = false
			}
			ps = append(ps, p)
		}
	}
	return ps, readable
}

func (c *checker) processor(at string, m map[string]any) processor {
	p := processor{at: at, bad: map[string]bool{}}
	wrong := func(f, format string, args ...any) {
		c.add(at+"."+f, format, args...)
		p.bad[f] = true
	}
	str := func(f string, dst *string) {
		if v, ok := m[f]; ok {
			if s, ok := v.(string); ok {
				*dst = s
			} else {
				wrong(f, "%s, not a string", kind(v))
			}
		}
	}
	boolean := func(f string, dst *bool) {
		if v, ok := m[f]; ok {
			if b, ok := v.(bool); ok {
				*dst = b
			} else {
				wrong(f, "%s, not true or false", kind(v))
			}
		}
	}
	strs := func(f string, dst *[]string) {
		v, ok := m[f]
		if !ok || v == nil {
			return
		}
		list, ok := v.([]any)
		if !ok {
			wrong(f, "%s, not a list of field names such as [\"gl_path\"]", kind(v))
			return
		}
		for k, e := range list {
			s, ok := e.(string)
			if !ok {
				c.add(fmt.Sprintf("%s.%s[%d]", at, f, k), "%s, not a field name", kind(e))
				p.bad[f] = true
				continue
			}
			*dst = append(*dst, s)
		}
	}
	str("name", &p.name)
	str("service_bus_topic", &p.topic)
	boolean("modifier", &p.modifier)
	var required bool // gecholog's choice to make; the broker works either way
	boolean("required", &required)
	boolean("async", &p.async)
	strs("input_fields_include", &p.include)
	strs("input_fields_exclude", &p.exclude)
	strs("output_fields_write", &p.output)
	if v, ok := m["timeout"]; ok {
		switch n, isNum := v.(float64); {
		case !isNum:
			wrong("timeout", "%s, not a number of milliseconds", kind(v))
		case n != math.Trunc(n):
			wrong("timeout", "%v is not a whole number of milliseconds", n)
		default:
			p.timeout, p.hasTimeout = n, true
		}
	}
	return p
}

// on returns the processors called on subject.
func on(ps []processor, subject string) []processor {
	var out []processor
	for _, p := range ps {
		if p.topic == subject {
			out = append(out, p)
		}
	}
	return out
}

// strayBroker names a processor that looks like the broker but is called on
// another subject: the likely cause when none is on subject.
func strayBroker(all []processor, subject string) string {
	for _, p := range all {
		if p.topic != subject && strings.Contains(strings.ToLower(p.name), "broker") {
			return fmt.Sprintf(" (%s, named %q, is on %q: set its service_bus_topic to %q, or run the broker with that subject)", p.at, p.name, p.topic, subject)
		}
	}
	return ""
}

// onSubject returns section's processors on subject and reports none or
// several. readable is false when part of the section could not be read,
// and then none is not reported: the entry may be in that part.
func (c *checker) onSubject(section string, ps []processor, readable bool, subject string, all []processor, fix string) []processor {
	mine := on(ps, subject)
	switch {
	case len(mine) == 0 && readable:
		c.add(section+".processors", "no processor on %q: %s%s", subject, fix, strayBroker(all, subject))
	case len(mine) > 1:
		var at []string
		for _, p := range mine {
			at = append(at, p.at)
		}
		c.add(section+".processors", "%d processors on %q (%s): keep one; gecholog calls every entry, so the broker gets each call more than once", len(mine), subject, strings.Join(at, ", "))
	}
	return mine
}

// needsInput reports, through report (add or advise), a field the broker
// should receive but that p's input fields do not give it.
func (c *checker) needsInput(report func(field, format string, args ...any), p processor, field, why string) {
	if p.has("input_fields_include") && !slices.Contains(p.include, field) {
		report(p.at+".input_fields_include", "add %q: %s", field, why)
	}
	if p.has("input_fields_exclude") && slices.Contains(p.exclude, field) {
		report(p.at+".input_fields_exclude", "remove %q: %s", field, why)
	}
}

func (c *checker) requestProcessor(ps []processor) {
	for _, p := range ps {
		if p.has("modifier") && !p.modifier {
			c.add(p.at+".modifier", "set true: gl_path is already in the transaction and gecholog lets only a modifier replace a field, so the broker's choice is dropped")
		}
		if p.has("async") && p.async {
			c.add(p.at+".async", "set false: gecholog does not wait for an async request processor before the outbound call, so the broker's choice comes too late to route it")
		}
		c.needsInput(c.add, p, "gl_path", "the broker chooses a router by the ingress path gecholog sends it")
		if p.has("output_fields_write") && !slices.Contains(p.output, "gl_path") {
			c.add(p.at+".output_fields_write", "add \"gl_path\": gecholog keeps only these fields of a reply, so the broker's choice is dropped")
		}
		switch {
		case !p.has("timeout"):
		case !p.hasTimeout:
			c.add(p.at+".timeout", "missing: set it above 0 and at most %d ms (the seed uses 50): the broker needs time to answer", maxRequestTimeout)
		case p.timeout <= 0:
			c.add(p.at+".timeout", "%v ms: set it above 0 and at most %d ms (the seed uses 50): the broker needs time to answer", p.timeout, maxRequestTimeout)
		case p.timeout > maxRequestTimeout:
			c.add(p.at+".timeout", "%v ms: set it at most %d ms (the seed uses 50): while the broker is down gecholog waits this long on every client call", p.timeout, maxRequestTimeout)
		}
	}
}

func (c *checker) responseProcessor(ps []processor, retryAfter bool) {
	for _, p := range ps {
		if p.has("async") && !p.async {
			c.add(p.at+".async", "set true: gecholog waits for a synchronous response processor before answering the client, adding its reply time to every call")
		}
		c.needsInput(c.add, p, "gl_path", "the broker must know which router the call used")
		c.needsInput(c.add, p, "egress_status_code", "the broker takes a router out by the status the client got")
		if retryAfter {
			// Only the Retry-After of a 429 or 503 is read from it; the
			// router is taken out either way.
			c.needsInput(c.advise, p, "inbound_headers", "it carries the upstream's Retry-After, which the broker honours; without it a 429 or 503 takes the router out for the broker's own disabled time, not as long as the upstream asks")
		}
		switch {
		case !p.has("timeout"):
		case !p.hasTimeout:
			c.add(p.at+".timeout", "missing: set it above 0 ms (the seed uses 50): gecholog waits for the broker's empty reply and logs a timeout as an error")
		case p.timeout <= 0:
			c.add(p.at+".timeout", "%v ms: set it above 0 ms (the seed uses 50): gecholog waits for the broker's empty reply and logs a timeout as an error", p.timeout)
		}
	}
}
