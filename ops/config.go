package ops

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/gecholog"
	"github.com/gecholog/broker/internal/safetext"
	"github.com/gecholog/broker/kv"
)

// The fleet's configuration commands: broker config show, set, history,
// diff and rollback (docs/operating.md, "The fleet's configuration").
// They read and write the bucket beside the health bucket
// (kv.ConfigBucket); every write is a compare-and-set on the revision
// read, so that two operators never overwrite each other.

// maxAsWritten bounds how much of a refused revision show prints.
const maxAsWritten = 2000

// configBucket is an open connection to the configuration bucket.
type configBucket struct {
	cs     *kv.ConfigStore
	name   string
	server string // the connected server, without credentials
}

// withConfig connects as `broker config cmd`, opens the configuration
// bucket (set creates it: it writes the first revision), runs fn with a
// context bounded by opTimeout and closes the connection. Every failure
// is one line that says what to do, with no secret in it.
func (t Target) withConfig(ctx context.Context, cmd string, create bool, fn func(context.Context, configBucket) error) error {
	return t.NATS.Scrub(t.openConfig(ctx, cmd, create, fn))
}

func (t Target) openConfig(ctx context.Context, cmd string, create bool, fn func(context.Context, configBucket) error) error {
	nc, server, err := t.dial("config "+cmd, false)
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	name := kv.ConfigBucket(t.Bucket)
	cs, err := kv.OpenConfig(ctx, js, name, false)
	switch {
	case errors.Is(err, kv.ErrNoBucket) && create:
		// The write creates it.
	case errors.Is(err, kv.ErrNoBucket):
		return fmt.Errorf("bucket %s does not exist on %s: the fleet's configuration was never written there; write it with broker config set FILE, or start a replica, which writes its own (or BROKER_BUCKET differs)", name, server)
	case errors.Is(err, kv.ErrNoJetStream):
		return fmt.Errorf("JetStream is not enabled on %s, so there is no fleet configuration: each replica runs by its own pools file and settings; to share one, %s", server, gecholog.EnableJetStream)
	case err != nil:
		return timedOut(err, server)
	}
	return timedOut(fn(ctx, configBucket{cs: cs, name: name, server: server}), server)
}

// revisions are the revisions the bucket keeps, oldest first.
type revisions []kv.ConfigEntry

// read reads every revision kept; with none, an error saying how to write
// the first.
func (b configBucket) read(ctx context.Context) (revisions, error) {
	rs, err := b.cs.History(ctx)
	if err != nil {
		return nil, err
	}
	if len(rs) == 0 {
		return nil, fmt.Errorf("bucket %s on %s holds no configuration yet; write it with broker config set FILE, or start a replica, which writes its own", b.name, b.server)
	}
	return rs, nil
}

// find is the index of revision rev; an error names the revisions kept.
func (rs revisions) find(b configBucket, rev uint64) (int, error) {
	for i, e := range rs {
		if e.Revision == rev {
			return i, nil
		}
	}
	return 0, fmt.Errorf("revision %d: bucket %s keeps revisions %d to %d (the last %d writes); broker config history lists them",
		rev, b.name, rs[0].Revision, rs[len(rs)-1].Revision, kv.ConfigHistory)
}

// validBefore is the index of the newest valid revision before index i;
// -1 when there is none.
func (rs revisions) validBefore(i int) int {
	for j := i - 1; j >= 0; j-- {
		if rs[j].Err == nil {
			return j
		}
	}
	return -1
}

// inForce is the index of the newest valid revision, which the replicas
// run by; -1 when there is none.
func (rs revisions) inForce() int { return rs.validBefore(len(rs)) }

// usable returns an error unless the revision at i can be shown as
// pools, policy and bound: one line saying what it is instead.
func (rs revisions) usable(i int) error {
	e := rs[i]
	switch {
	case e.Deleted:
		return fmt.Errorf("revision %d is a delete marker (the document was deleted by hand, e.g. with nats kv del), not a configuration; broker config history lists the others", e.Revision)
	case e.Err != nil:
		return fmt.Errorf("revision %d is refused by every replica: %s; broker config show --revision %d shows it", e.Revision, safetext.Line(e.Err.Error()), e.Revision)
	}
	return nil
}

// shownText is a field from the bucket made safe for a terminal.
func shownText(s string) string { return safetext.Clip(s, safetext.MaxShown) }

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// writer names who wrote e.
func writer(e kv.ConfigEntry) string { return cmp.Or(shownText(e.Config.By), "someone unnamed") }

// writeJSON prints v for scripts, escaped so that control and
// bidirectional characters from the bucket spoof no terminal.
func writeJSON(w io.Writer, v any) error {
	doc, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(safetext.JSON(doc), '\n'))
	return err
}

// content is the document without who wrote it, when and from what: what
// `config set` reads back.
func content(c kv.FleetConfig) *kv.FleetConfig {
	return &kv.FleetConfig{Version: c.Version, Pools: c.Pools, Policy: c.Policy, InFlightBound: c.InFlightBound}
}

// shownRevision is a revision as show --json prints it.
type shownRevision struct {
	Bucket   string          `json:"bucket"`
	Revision uint64          `json:"revision"`
	Written  time.Time       `json:"written"`
	By       string          `json:"by,omitempty"`
	Source   string          `json:"source,omitempty"`
	Document *kv.FleetConfig `json:"document,omitempty"`
	// Refused says why every replica refuses the revision; AsWritten is
	// then what it holds.
	Refused   string `json:"refused,omitempty"`
	AsWritten string `json:"as_written,omitempty"`
	Deleted   bool   `json:"deleted,omitempty"`
	// InForce is the newest valid revision, which the replicas run by.
	InForce uint64 `json:"in_force,omitempty"`
}

// ShowConfig prints revision rev of the fleet's configuration (0: the
// newest): its pools, policy and in-flight bound, and when, by whom and
// from what it was written. A revision the replicas refuse is shown with
// why, and what it holds; a delete marker as one.
func ShowConfig(ctx context.Context, t Target, rev uint64, asJSON bool, stdout io.Writer) error {
	return t.withConfig(ctx, "show", false, func(ctx context.Context, b configBucket) error {
		rs, err := b.read(ctx)
		if err != nil {
			return err
		}
		i := len(rs) - 1
		if rev != 0 {
			if i, err = rs.find(b, rev); err != nil {
				return err
			}
		}
		e, in := rs[i], rs.inForce()
		if asJSON {
			s := shownRevision{Bucket: b.name, Revision: e.Revision, Written: e.Created, Deleted: e.Deleted}
			if in >= 0 {
				s.InForce = rs[in].Revision
			}
			if !e.Deleted {
				s.By, s.Source = e.Config.By, e.Config.Source
			}
			if e.Err == nil {
				s.Document = content(e.Config)
			} else if !e.Deleted {
				s.Refused, s.AsWritten = e.Err.Error(), string(e.Raw)
			}
			return writeJSON(stdout, s)
		}
		return writeRevision(stdout, b, rs, i)
	})
}

func writeRevision(w io.Writer, b configBucket, rs revisions, i int) error {
	e := rs[i]
	kept := ""
	if j := rs.inForce(); j >= 0 && j != i {
		kept = fmt.Sprintf("; the replicas run by revision %d, the newest valid one (broker config rollback %d writes it again)", rs[j].Revision, rs[j].Revision)
	}
	fmt.Fprintf(w, "revision %d of bucket %s on %s, written %s", e.Revision, b.name, b.server, stamp(e.Created))
	if e.Deleted {
		fmt.Fprintf(w, "\na delete marker: the document was deleted by hand (e.g. with nats kv del)%s\n", kept)
		return nil
	}
	fmt.Fprintf(w, " by %s", writer(e))
	if e.Config.Source != "" {
		fmt.Fprintf(w, ", from %s", shownText(e.Config.Source))
	}
	fmt.Fprintln(w)
	if e.Err != nil {
		fmt.Fprintf(w, "refused by every replica: %s%s\n", safetext.Line(e.Err.Error()), kept)
		fmt.Fprintf(w, "as written: %s\n", safetext.Clip(string(e.Raw), maxAsWritten))
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	c := e.Config
	for _, p := range c.Pools {
		fmt.Fprintf(tw, "pool %s, strategy %s\n", p.Ingress, cmp.Or(p.Strategy, "random"))
		for _, r := range p.Routers {
			fmt.Fprintf(tw, "  %s\tweight %d\tpriority %d\n", r.Path, r.Weight, r.Priority)
		}
	}
	fmt.Fprintln(tw, "policy")
	for _, f := range c.Policy.Fields() {
		fmt.Fprintf(tw, "  %s\t%s\n", f.Name, safetext.Line(kv.ShownValue(f.Value)))
	}
	fmt.Fprintf(tw, "inflight_bound\t%s\n", kv.ShownValue(c.InFlightBound))
	return tw.Flush()
}

// describeConfig says what a first revision configures: "/azure/ over 3
// routers".
func describeConfig(c kv.FleetConfig) string {
	var each []string
	for _, p := range c.Pools {
		each = append(each, fmt.Sprintf("%s over %s", p.Ingress, plural(len(p.Routers), "router")))
	}
	return "first revision: " + strings.Join(each, ", ")
}

// historyLine is a revision as history --json prints it.
type historyLine struct {
	Revision uint64    `json:"revision"`
	Written  time.Time `json:"written"`
	By       string    `json:"by,omitempty"`
	Source   string    `json:"source,omitempty"`
	// Since is the revision the changes are from (0: the first).
	Since   uint64            `json:"since,omitempty"`
	Changes []kv.ConfigChange `json:"changes"`
	Summary string            `json:"summary"`
	Refused string            `json:"refused,omitempty"`
	Deleted bool              `json:"deleted,omitempty"`
}

// historyOf says what revision i changed, vs the newest valid one before.
func (rs revisions) historyOf(i int) historyLine {
	e := rs[i]
	h := historyLine{Revision: e.Revision, Written: e.Created, Changes: []kv.ConfigChange{}}
	switch {
	case e.Deleted:
		h.Deleted, h.Summary = true, "deleted by hand: the replicas keep the last good revision"
		return h
	case e.Err != nil:
		h.By, h.Source = e.Config.By, e.Config.Source
		h.Refused = e.Err.Error()
		h.Summary = "refused: " + h.Refused
		return h
	}
	h.By, h.Source = e.Config.By, e.Config.Source
	j := rs.validBefore(i)
	if j < 0 {
		h.Summary = describeConfig(e.Config)
		return h
	}
	h.Since = rs[j].Revision
	h.Changes = kv.DiffConfig(rs[j].Config, e.Config)
	h.Summary = kv.SummarizeChanges(h.Changes)
	if j != i-1 {
		h.Summary = fmt.Sprintf("since revision %d: %s", h.Since, h.Summary)
	}
	return h
}

// ConfigHistory prints one line per revision kept: the revision, when,
// by whom, from what, and what it changed from the newest valid revision
// before it.
func ConfigHistory(ctx context.Context, t Target, asJSON bool, stdout io.Writer) error {
	return t.withConfig(ctx, "history", false, func(ctx context.Context, b configBucket) error {
		rs, err := b.read(ctx)
		if err != nil {
			return err
		}
		var lines []historyLine
		for i := range rs {
			lines = append(lines, rs.historyOf(i))
		}
		if asJSON {
			return writeJSON(stdout, lines)
		}
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "REVISION\tWRITTEN\tBY\tSOURCE\tCHANGES")
		for _, h := range lines {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", h.Revision, stamp(h.Written), cmp.Or(shownText(h.By), "-"),
				cmp.Or(shownText(h.Source), "-"), safetext.Line(h.Summary))
		}
		return tw.Flush()
	})
}

// configDiff is a diff as diff --json prints it.
type configDiff struct {
	From    uint64            `json:"from"`
	To      uint64            `json:"to"`
	Changes []kv.ConfigChange `json:"changes"`
}

// ConfigDiff prints what revision to (0: the newest) configures
// differently from revision from (0: the newest valid one before to), one
// change per line.
func ConfigDiff(ctx context.Context, t Target, from, to uint64, asJSON bool, stdout io.Writer) error {
	return t.withConfig(ctx, "diff", false, func(ctx context.Context, b configBucket) error {
		rs, err := b.read(ctx)
		if err != nil {
			return err
		}
		ti := len(rs) - 1
		if to != 0 {
			if ti, err = rs.find(b, to); err != nil {
				return err
			}
		}
		if err := rs.usable(ti); err != nil {
			return err
		}
		fi := rs.validBefore(ti)
		if from != 0 {
			if fi, err = rs.find(b, from); err != nil {
				return err
			}
			if err := rs.usable(fi); err != nil {
				return err
			}
		} else if fi < 0 {
			return fmt.Errorf("revision %d is the first valid revision kept: there is none before it to compare with", rs[ti].Revision)
		}
		a, z := rs[fi], rs[ti]
		changes := kv.DiffConfig(a.Config, z.Config)
		if asJSON {
			return writeJSON(stdout, configDiff{From: a.Revision, To: z.Revision, Changes: append([]kv.ConfigChange{}, changes...)})
		}
		fmt.Fprintf(stdout, "revision %d (%s by %s) → revision %d (%s by %s)\n", a.Revision, stamp(a.Created), writer(a), z.Revision, stamp(z.Created), writer(z))
		if len(changes) == 0 {
			fmt.Fprintln(stdout, "no change")
		}
		for _, c := range changes {
			fmt.Fprintln(stdout, safetext.Line(c.String()))
		}
		return nil
	})
}
