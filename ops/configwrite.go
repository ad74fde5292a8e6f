package ops

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/gecholog/broker/internal/safetext"
	"github.com/gecholog/broker/kv"
)

// ConfigSet is a new revision of the fleet's configuration, from `broker
// config set FILE`.
type ConfigSet struct {
	// Doc is what to write, validated as a replica validates it.
	Doc kv.FleetConfig
	// PoolsOnly writes Doc's pools only: the policy and the in-flight
	// bound are kept from the revision in force (the newest valid one),
	// or Doc's (the defaults) when there is none.
	PoolsOnly bool
	// File names where Doc came from, for the revision's source.
	File string
	// By names who writes it; "" takes Operator's name.
	By   string
	JSON bool

	// afterRead, when set, runs between reading the newest revision and
	// writing: tests make two writers read the same revision with it.
	afterRead func()
}

// written is a write as set and rollback --json print it.
type written struct {
	Revision uint64            `json:"revision"`
	Previous uint64            `json:"previous,omitempty"`
	Written  bool              `json:"written"`
	By       string            `json:"by,omitempty"`
	Source   string            `json:"source,omitempty"`
	Changes  []kv.ConfigChange `json:"changes"`
	Summary  string            `json:"summary"`
}

// SetConfig writes s.Doc as a new revision with a compare-and-set on the
// newest revision read: a writer that lost a race is told which revision
// won, when and by whom, and nothing is written. A document that
// configures what the newest revision does is not written either.
func SetConfig(ctx context.Context, t Target, s ConfigSet, getenv func(string) string, stdout io.Writer) error {
	doc := s.Doc
	doc.By, doc.Source, doc.At, doc.Files = cmp.Or(strings.TrimSpace(s.By), Operator(getenv)), "config set "+s.File, time.Time{}, nil
	return t.withConfig(ctx, "set", true, func(ctx context.Context, b configBucket) error {
		rs, err := b.cs.History(ctx)
		if err != nil && !errors.Is(err, kv.ErrNoBucket) { // the write creates it
			return err
		}
		if in := revisions(rs).inForce(); s.PoolsOnly && in >= 0 {
			doc.Policy, doc.InFlightBound = rs[in].Config.Policy, rs[in].Config.InFlightBound
		}
		if _, _, _, err := doc.Settings(); err != nil {
			return fmt.Errorf("config set %s: %w; nothing written", s.File, err)
		}
		if s.afterRead != nil {
			s.afterRead()
		}
		return write(ctx, b, revisions(rs), doc, s.JSON, stdout)
	})
}

// write writes doc after rs unless it configures what the newest
// revision does, and says what changed.
func write(ctx context.Context, b configBucket, rs revisions, doc kv.FleetConfig, asJSON bool, stdout io.Writer) error {
	var read uint64
	var prev *kv.FleetConfig
	in := rs.inForce()
	if len(rs) > 0 {
		read = rs[len(rs)-1].Revision
	}
	if in >= 0 {
		prev = &rs[in].Config
	}
	out := written{By: doc.By, Source: doc.Source, Changes: []kv.ConfigChange{}}
	if in >= 0 {
		out.Changes = append(out.Changes, kv.DiffConfig(*prev, doc)...)
		out.Summary = kv.SummarizeChanges(out.Changes)
		out.Previous = rs[in].Revision
	} else {
		out.Summary = describeConfig(doc)
	}
	if in >= 0 && in == len(rs)-1 && len(out.Changes) == 0 {
		out.Revision = read
		if asJSON {
			return writeJSON(stdout, out)
		}
		fmt.Fprintf(stdout, "no change: revision %d already configures this; nothing written\n", read)
		return nil
	}
	rev, err := b.cs.Write(ctx, doc, read, prev)
	var ce *kv.ConflictError
	if errors.As(err, &ce) {
		if ce.Latest.Revision == 0 {
			return lineError{fmt.Sprintf("not written: the configuration changed since revision %d was read; read it again (broker config show) and retry", read), err}
		}
		return lineError{fmt.Sprintf("not written: the configuration changed since revision %d was read: revision %d was written at %s by %s; read it (broker config show) and retry",
			read, ce.Latest.Revision, stamp(ce.Latest.Created), writer(ce.Latest)), err}
	}
	if err != nil {
		return err
	}
	out.Revision, out.Written = rev, true
	if asJSON {
		return writeJSON(stdout, out)
	}
	fmt.Fprintf(stdout, "wrote revision %d of bucket %s by %s, from %s; every replica applies it within a second\n", rev, b.name, shownText(doc.By), shownText(doc.Source))
	if out.Previous != 0 {
		fmt.Fprintf(stdout, "changed since revision %d: %s\n", out.Previous, safetext.Line(out.Summary))
	} else {
		fmt.Fprintln(stdout, safetext.Line(out.Summary))
	}
	return nil
}

// lineError is an error said in one line of its own that still wraps
// what it stands for, for errors.Is.
type lineError struct {
	msg string
	err error
}

func (e lineError) Error() string { return e.msg }

func (e lineError) Unwrap() error { return e.err }

// Rollback writes revision Revision's content again, from `broker config
// rollback [N]`.
type Rollback struct {
	// Revision to write again; 0: the newest valid one before the newest.
	Revision uint64
	By       string
	JSON     bool
}

// RollbackConfig writes the content of revision r.Revision as a new
// revision, with the compare-and-set set uses.
func RollbackConfig(ctx context.Context, t Target, r Rollback, getenv func(string) string, stdout io.Writer) error {
	return t.withConfig(ctx, "rollback", false, func(ctx context.Context, b configBucket) error {
		rs, err := b.read(ctx)
		if err != nil {
			return err
		}
		i := rs.validBefore(len(rs) - 1)
		if r.Revision != 0 {
			if i, err = rs.find(b, r.Revision); err != nil {
				return err
			}
		} else if i < 0 {
			return fmt.Errorf("no valid revision before revision %d to roll back to; broker config history lists them", rs[len(rs)-1].Revision)
		}
		if err := rs.usable(i); err != nil {
			return err
		}
		doc := *content(rs[i].Config)
		doc.By = cmp.Or(strings.TrimSpace(r.By), Operator(getenv))
		doc.Source = fmt.Sprintf("rollback of revision %d", rs[i].Revision)
		return write(ctx, b, rs, doc, r.JSON, stdout)
	})
}
