package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/kv"
)

// The operator's commands: status, disable and enable. They use the same
// connection settings and environment as the processor, connect once with a
// short timeout instead of waiting for the server forever, and never create
// the bucket: that is the processor's job, and a tool that created it would
// hide a wrong server or BROKER_BUCKET behind an empty table.

const (
	// dialTimeout bounds connecting to each server of NATS_URL.
	dialTimeout = 5 * time.Second
	// opTimeout bounds everything a command does once connected.
	opTimeout = 10 * time.Second
	// maxFor is the longest --for: longer is surely a typo, and a disable
	// meant to be that long should be lifted by hand anyway.
	maxFor = 365 * 24 * time.Hour
	// defaultReason is a manual disable's reason when --reason is not given.
	defaultReason = "disabled by hand"
)

// statusCommand prints every pool router's state, and every other record
// in the bucket, as a table or, with --json, as a JSON array.
func statusCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	var asJSON bool
	c, pos, err := parseOp("status", "", args, getenv, stdout, func(s *settings) {
		s.bool(&asJSON, "json", "", "print a JSON array for scripts instead of the table")
	})
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("unexpected argument %q: status shows every router", pos[0])
	}
	return c.scrub(withBucket(ctx, c, stderr, func(ctx context.Context, b toolBucket) error {
		listed, err := b.store.Scan(ctx)
		if err != nil {
			return err
		}
		now := time.Now()
		rows := statusRows(c.pools, listed, now)
		if asJSON {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(rows)
		}
		fmt.Fprintf(stdout, "bucket %s on %s, %s mode (%s), at %s\n\n",
			b.store.Bucket(), b.server, b.store.Mode(), modeNote(b.store.Mode()), now.UTC().Format(time.RFC3339))
		return writeTable(stdout, rows)
	}))
}

// disableCommand writes a manual record for ROUTER, replacing whatever the
// key holds, so that every replica stops choosing it until --for ends or
// someone enables it.
func disableCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	var (
		period        time.Duration
		reason, by    string
		force         bool
		defaultByName = operator(getenv)
	)
	c, pos, err := parseOp("disable", "ROUTER", args, getenv, stdout, func(s *settings) {
		s.value(durationValue{&period}, "for", "", "how long, as a `duration` such as 30m or 2h; without it, until enabled by hand")
		s.string(&reason, "reason", "", defaultReason, "`text` saying why, shown by status")
		s.string(&by, "by", "", defaultByName, "`name` of who disables it, shown by status")
		s.bool(&force, "force", "", "disable a router that no configured pool has (for replicas with other pools)")
	})
	if err != nil {
		return err
	}
	router, err := oneRouter("disable", pos)
	if err != nil {
		return err
	}
	if err := c.checkRouter(router, force); err != nil {
		return err
	}
	if strings.TrimSpace(reason) == "" {
		reason = defaultReason
	}
	if strings.TrimSpace(by) == "" {
		by = defaultByName
	}
	return c.scrub(withBucket(ctx, c, stderr, func(ctx context.Context, b toolBucket) error {
		prev, prevErr := b.store.Get(ctx, router)
		now := time.Now()
		rec := kv.Record{Router: router, Reason: reason, At: now, By: by, Manual: true}
		if period > 0 {
			rec.Until = now.Add(period)
		}
		// Put, not compare-and-set: the operator means "whatever is there
		// now". Replicas only ever create or compare-and-set, so one racing
		// with this write loses and adopts the manual record.
		if _, err := b.store.Put(ctx, rec); err != nil {
			return err
		}
		line := fmt.Sprintf("disabled %s on every replica %s; manual, by %s: %s", router, untilText(rec.Until), by, reason)
		switch {
		case prevErr == nil && prev.Record.ActiveAt(now):
			line += "; replaces " + describe(prev.Record)
		case prevErr != nil && !errors.Is(prevErr, kv.ErrNotFound):
			line += "; replaces a record that could not be read"
		}
		fmt.Fprintln(stdout, oneLine(line))
		return nil
	}))
}

// enableCommand deletes ROUTER's key, so that every replica chooses it
// again at once.
func enableCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	c, pos, err := parseOp("enable", "ROUTER", args, getenv, stdout, nil)
	if err != nil {
		return err
	}
	router, err := oneRouter("enable", pos)
	if err != nil {
		return err
	}
	// Any router path may be enabled, pool member or not: lifting a disable
	// is always safe, and status lists records of routers no pool knows.
	return c.scrub(withBucket(ctx, c, stderr, func(ctx context.Context, b toolBucket) error {
		prev, err := b.store.Get(ctx, router)
		if errors.Is(err, kv.ErrNotFound) {
			fmt.Fprintf(stdout, "%s is already enabled: bucket %s holds no record for it\n", router, b.store.Bucket())
			return nil
		}
		what := "a record that could not be read"
		if err == nil {
			what = describe(prev.Record)
			if !prev.Record.ActiveAt(time.Now()) {
				what = "an ended " + strings.TrimPrefix(what, "the ")
			}
		}
		// Deleting, whatever the revision: every replica's watcher hears the
		// delete and re-enables the router at once.
		if err := b.store.Delete(ctx, router, 0); err != nil {
			return err
		}
		fmt.Fprintln(stdout, oneLine(fmt.Sprintf("enabled %s on every replica; removed %s", router, what)))
		return nil
	}))
}

// parseOp reads a tool command's settings: the connection settings the
// processor uses plus the command's own, registered by extra. Positional
// arguments may stand before, between or after the flags, as in
// `broker disable /azure/gpt4/ --for 30m`; they are returned in order.
func parseOp(name, operands string, args []string, getenv func(string) string, stdout io.Writer, extra func(*settings)) (config, []string, error) {
	var c config
	s := newSettings(name, getenv)
	s.connection(&c)
	if extra != nil {
		extra(s)
	}
	if s.err != nil {
		return c, nil, s.err
	}
	var pos []string
	for {
		err := s.fs.Parse(args)
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(stdout, "Usage:", strings.Join(slices.DeleteFunc([]string{"broker", name, operands, "[flags]"}, func(w string) bool { return w == "" }), " "))
			s.fs.SetOutput(stdout)
			s.fs.PrintDefaults()
		}
		if err != nil {
			return c, nil, err
		}
		rest := s.fs.Args()
		if len(rest) == 0 {
			break
		}
		// The flag package stops at the first operand, and after "--".
		if i := len(args) - len(rest) - 1; i >= 0 && args[i] == "--" {
			pos = append(pos, rest...)
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	c.id = "broker " + name // names the connection on the server
	if err := c.resolveConnection(); err != nil {
		return c, nil, err
	}
	return c, pos, nil
}

// oneRouter is the single ROUTER operand of cmd.
func oneRouter(cmd string, pos []string) (string, error) {
	switch {
	case len(pos) == 0:
		return "", fmt.Errorf("%s: give the ROUTER, e.g. broker %s /azure/gpt4/", cmd, cmd)
	case len(pos) > 1:
		return "", fmt.Errorf("%s: one ROUTER at a time, got %q", cmd, pos)
	case !broker.ValidPath(pos[0]):
		return "", fmt.Errorf("router %q: a router path starts and ends with / and holds only letters, digits and /", pos[0])
	}
	return pos[0], nil
}

// checkRouter refuses a router that no pool has, unless forced: replicas
// ignore records of routers they do not serve, so such a disable would do
// nothing and most likely is a typo.
func (c config) checkRouter(router string, force bool) error {
	var routers []string
	for _, p := range c.pools {
		for _, r := range p.Routers {
			if r.Path == router {
				return nil
			}
			if !slices.Contains(routers, r.Path) {
				routers = append(routers, r.Path)
			}
		}
	}
	if force {
		return nil
	}
	from := "the default pool (set -pools or BROKER_POOLS for others)"
	if c.poolsFile != "" {
		from = "pools file " + c.poolsFile
	}
	return fmt.Errorf("router %q is in no pool: the routers of %s are %s; give --force to disable it anyway",
		router, from, strings.Join(routers, ", "))
}

// toolBucket is an open connection to the router health bucket.
type toolBucket struct {
	store  *kv.Store
	server string // the connected server, without credentials
}

// withBucket connects, opens the bucket without creating it, runs fn with a
// context bounded by opTimeout, and closes the connection. Every failure is
// one line that says what to do.
func withBucket(ctx context.Context, c config, stderr io.Writer, fn func(context.Context, toolBucket) error) error {
	opts, err := natsOptions(c, newLogger(c, stderr))
	if err != nil {
		return err
	}
	// A tool fails fast: one attempt per server, no reconnecting forever.
	opts = append(opts, nats.Timeout(dialTimeout), nats.NoReconnect(), nats.NoCallbacksAfterClientClose())
	nc, err := nats.Connect(c.server, opts...)
	if err != nil {
		hint := "is the server running and reachable? set NATS_URL or GECHOLOG_HOST"
		if errors.Is(err, nats.ErrAuthorization) {
			hint = "the server refused the credentials: check NATS_TOKEN (or NATS_USER and NATS_PASSWORD, NATS_CREDS, NATS_NKEY)"
		}
		return fmt.Errorf("cannot connect to NATS at %s: %w: %s", redact(c.server), err, hint)
	}
	defer nc.Close()
	server := redact(nc.ConnectedUrl())

	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	store, err := kv.Open(ctx, js, kv.Config{Bucket: c.bucket, NoCreate: true})
	switch {
	case errors.Is(err, kv.ErrNoBucket):
		return fmt.Errorf("bucket %q does not exist on %s: no broker has run against this server yet, or BROKER_BUCKET differs", c.bucket, server)
	case errors.Is(err, kv.ErrNoJetStream):
		return fmt.Errorf("JetStream is not enabled on %s, so broker replicas there keep their disables each to itself and no tool can see or change them; to share them, %s", server, enableJetStream)
	case err != nil:
		return timedOut(err, server)
	}
	defer store.Close()
	return timedOut(fn(ctx, toolBucket{store: store, server: server}), server)
}

func timedOut(err error, server string) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("no answer from %s within %v: %w", server, opTimeout, err)
	}
	return err
}

// statusRow is one line of `broker status`. Its JSON names are the
// interface for scripts: add fields, never rename them.
type statusRow struct {
	Ingress string `json:"ingress"`
	Router  string `json:"router"`
	// State is "enabled", "disabled", "probation" (the disable has ended
	// and one probe call decides), "unreadable" (replicas ignore the
	// record, so the router is in use) or "unknown router" (a record no
	// configured pool uses).
	State       string  `json:"state"`
	Until       *string `json:"until"`        // RFC 3339; null: until enabled by hand, or enabled
	LeftSeconds *int64  `json:"left_seconds"` // rounded up; null when Until is
	Reason      string  `json:"reason"`
	Status      *int    `json:"status"` // the status code that caused the disable
	By          string  `json:"by"`
	Manual      bool    `json:"manual"`
	// Level is the backoff level of an automatic disable.
	Level *int `json:"level"`
	// Probe names the replica holding a router's probe, while it holds it.
	Probe string `json:"probe,omitempty"`
}

// statusColumns are the table's columns: adding one is one line here.
var statusColumns = []struct {
	head string
	cell func(statusRow) string
}{
	{"INGRESS", func(r statusRow) string { return r.Ingress }},
	{"ROUTER", func(r statusRow) string { return r.Router }},
	{"STATE", func(r statusRow) string {
		switch {
		case r.Manual:
			return r.State + " (manual)"
		case r.Probe != "":
			return r.State + " (probe: " + r.Probe + ")"
		}
		return r.State
	}},
	{"UNTIL", func(r statusRow) string {
		if r.Until == nil && r.State == "disabled" {
			return "until enabled by hand"
		}
		return stringCell(r.Until)
	}},
	{"LEFT", func(r statusRow) string {
		if r.LeftSeconds == nil {
			return ""
		}
		return (time.Duration(*r.LeftSeconds) * time.Second).String()
	}},
	{"STATUS", func(r statusRow) string { return numberCell(r.Status) }},
	{"REASON", func(r statusRow) string { return r.Reason }},
	{"BY", func(r statusRow) string { return r.By }},
	{"LEVEL", func(r statusRow) string { return numberCell(r.Level) }},
}

// statusRows lists every router of every pool, in the pools' order, then
// the records of routers no pool knows, in key order, so that nothing in
// the bucket is hidden.
func statusRows(pools []broker.Pool, listed []kv.Listed, now time.Time) []statusRow {
	records := map[string]kv.Listed{}
	for _, l := range listed {
		records[l.Router] = l
	}
	known := map[string]bool{}
	rows := []statusRow{}
	for _, p := range pools {
		for _, r := range p.Routers {
			known[r.Path] = true
			row := statusRow{Ingress: p.Ingress, Router: r.Path, State: "enabled"}
			if l, ok := records[r.Path]; ok {
				switch {
				case l.Err != nil:
					row.State = "unreadable"
					row.Reason = "replicas ignore this record: " + l.Err.Error()
				default:
					switch broker.RecordPhase(l.Entry.Record, now) {
					case broker.Disabled, broker.Manual:
						row.State = "disabled"
						row.fill(l.Entry.Record, now)
					case broker.Probation:
						row.State = "probation"
						row.fill(l.Entry.Record, now)
						if p := l.Entry.Record.Probe; p != nil && now.Before(p.Until) {
							row.Probe = p.By
						}
					}
					// An ended manual record is enabled already; its key goes soon.
				}
			}
			rows = append(rows, row)
		}
	}
	listed = slices.SortedFunc(slices.Values(listed), func(a, b kv.Listed) int { return strings.Compare(a.Router, b.Router) })
	for _, l := range listed {
		if known[l.Router] {
			continue
		}
		row := statusRow{Router: l.Router, State: "unknown router"}
		if l.Err != nil {
			row.Reason = "unreadable: " + l.Err.Error()
		} else {
			row.fill(l.Entry.Record, now)
		}
		rows = append(rows, row)
	}
	return rows
}

func (row *statusRow) fill(rec kv.Record, now time.Time) {
	row.Reason, row.By, row.Manual = rec.Reason, rec.By, rec.Manual
	if rec.Status != 0 {
		row.Status = &rec.Status
	}
	if !rec.Manual {
		row.Level = &rec.Level
	}
	if !rec.Until.IsZero() {
		until := rec.Until.UTC().Format(time.RFC3339)
		left := int64(max(0, (rec.Until.Sub(now)+time.Second-1)/time.Second))
		row.Until, row.LeftSeconds = &until, &left
	}
}

func writeTable(w io.Writer, rows []statusRow) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	cells := make([]string, len(statusColumns))
	for i, col := range statusColumns {
		cells[i] = col.head
	}
	fmt.Fprintln(tw, strings.Join(cells, "\t"))
	for _, r := range rows {
		for i, col := range statusColumns {
			cells[i] = oneLine(col.cell(r))
			if cells[i] == "" {
				cells[i] = "-"
			}
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

func modeNote(m kv.Mode) string {
	if m == kv.ModeTTL {
		return "the server expires disables"
	}
	return "no per-key TTL on this server: replicas enforce until and delete ended records"
}

// describe names a record for the confirming lines.
func describe(r kv.Record) string {
	kind := "automatic"
	if r.Manual {
		kind = "manual"
	}
	s := fmt.Sprintf("the %s disable by %s (%s", kind, r.By, r.Reason)
	if !r.Until.IsZero() {
		s += ", until " + r.Until.UTC().Format(time.RFC3339)
	}
	return s + ")"
}

func untilText(until time.Time) string {
	if until.IsZero() {
		return "until enabled by hand"
	}
	return fmt.Sprintf("for %v, until %s", time.Until(until).Round(time.Second), until.UTC().Format(time.RFC3339))
}

// operator names the person running the command: $USER@hostname.
func operator(getenv func(string) string) string {
	user := getenv("USER")
	if user == "" {
		user = getenv("LOGNAME")
	}
	if user == "" {
		user = "operator"
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		return user + "@" + h
	}
	return user
}

// durationValue is --for: a Go duration from a second to a year.
type durationValue struct{ p *time.Duration }

func (v durationValue) Set(s string) error {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	switch {
	case err != nil:
		return errors.New("not a duration such as 90s, 30m, 2h or 1h30m")
	case d < time.Second:
		return errors.New("must be at least 1s; leave --for out to disable until enabled by hand")
	case d > maxFor:
		return errors.New("more than a year; leave --for out to disable until enabled by hand")
	}
	*v.p = d
	return nil
}

func (v durationValue) String() string {
	if v.p == nil || *v.p == 0 {
		return ""
	}
	return v.p.String()
}

// scrub keeps secrets out of an error: nats.go and net/url quote server
// URLs, which may carry a token or password, in their messages. It also
// keeps the error on one line.
func (c config) scrub(err error) error {
	if err == nil {
		return nil
	}
	msg := oneLine(err.Error())
	secrets := append(userinfo(c.server), c.token, c.password)
	for _, s := range secrets {
		if len(s) >= 3 {
			msg = strings.ReplaceAll(msg, s, "[redacted]")
		}
	}
	return scrubbed{msg: msg, err: err}
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

// redact removes credentials from server URLs before they are shown. It
// cuts by hand rather than with net/url, which would return a mistyped URL
// unchanged, credentials and all.
// nats.go's own redaction keeps a token given as the URL's user name.
func redact(servers string) string {
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

// oneLine puts text on one line: records may be written by hand, and a
// reason with a tab or a newline must not break the table or the line.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}

func stringCell(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func numberCell(n *int) string {
	if n == nil {
		return ""
	}
	return fmt.Sprint(*n)
}
