package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/safetext"
	"github.com/gecholog/broker/kv"
	"github.com/gecholog/broker/ops"
)

// configUsage is what `broker config -h` prints.
const configUsage = `Usage: broker config SUBCOMMAND [flags]
The fleet's configuration: the pools, the failure policy and the in-flight bound every
replica runs by, in bucket BROKER_BUCKET_config, each change a revision.

  show [--revision N]   a revision (default: the newest): its pools, policy and bound, who wrote it
  set FILE              write FILE as a new revision: a pools file (the policy is kept) or a
                        fleet document {"version": 1, "pools": [...], "policy": {...}}
  history               one line per revision kept: when, by whom, what it changed
  diff [A] [B]          what changed from revision A (default: the one before B) to B (default: the newest)
  rollback [N]          write revision N again (default: the one before the newest)

Each takes --json. "broker config SUBCOMMAND -h" lists its settings.`

// configCommands are config's subcommands by name.
var configCommands = map[string]func(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error{
	"show":     configShow,
	"set":      configSet,
	"history":  configHistory,
	"diff":     configDiff,
	"rollback": configRollback,
}

func configCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help" || args[0] == "--h") {
		fmt.Fprintln(stdout, configUsage)
		return nil
	}
	if len(args) == 0 {
		return fmt.Errorf("config: give a subcommand: show, set, history, diff or rollback (broker config -h)")
	}
	cmd := configCommands[args[0]]
	if cmd == nil {
		return fmt.Errorf("config %q: the subcommands are show, set, history, diff and rollback (broker config -h)", safetext.Clip(args[0], safetext.MaxShown))
	}
	return cmd(ctx, args[1:], getenv, stdout, stderr)
}

// configSettings registers what every config subcommand takes.
func configSettings(name string, getenv func(string) string, asJSON *bool) *settings {
	s := newSettings("config "+name, getenv)
	s.natsSettings()
	s.set.Bool(asJSON, "json", "", "print JSON for scripts")
	return s
}

// revisionValue is a revision number.
type revisionValue uint64

func (v *revisionValue) Set(s string) error {
	n, err := parseRevision(s)
	*v = revisionValue(n)
	return err
}

func (v *revisionValue) String() string {
	if v == nil || *v == 0 {
		return ""
	}
	return strconv.FormatUint(uint64(*v), 10)
}

// parseRevision reads a revision operand.
func parseRevision(s string) (uint64, error) {
	n, err := strconv.ParseUint(s, 10, 64)
	switch {
	case err != nil:
		return 0, fmt.Errorf("revision %q: not a revision number such as 3; broker config history lists them", safetext.Clip(s, safetext.MaxShown))
	case n == 0:
		return 0, fmt.Errorf("revision 0: revisions count from 1; broker config history lists them")
	}
	return n, nil
}

// revisionOperands reads at most max revision operands of cmd.
func revisionOperands(cmd string, operands []string, max int) ([]uint64, error) {
	if len(operands) > max {
		return nil, fmt.Errorf("config %s: at most %d revisions, got %q", cmd, max, operands)
	}
	var out []uint64
	for _, o := range operands {
		n, err := parseRevision(o)
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, nil
}

func configShow(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	var asJSON bool
	var rev revisionValue
	s := configSettings("show", getenv, &asJSON)
	s.set.Var(&rev, "revision", "", "the `revision` to show; default: the newest")
	operands, err := s.parseOperands(args, "Usage: broker config show [--revision N] [flags]\nShows a revision of the fleet's configuration: its pools, policy and in-flight bound, and who wrote it when.", stdout)
	if err != nil {
		return err
	}
	if len(operands) > 0 {
		return fmt.Errorf("config show: unexpected argument %q; give a revision with --revision N", operands[0])
	}
	return ops.ShowConfig(ctx, s.target(stderr), uint64(rev), asJSON, stdout)
}

func configHistory(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	var asJSON bool
	s := configSettings("history", getenv, &asJSON)
	operands, err := s.parseOperands(args, "Usage: broker config history [flags]\nLists every revision of the fleet's configuration the bucket keeps: when, by whom, from what, and what it changed.", stdout)
	if err != nil {
		return err
	}
	if len(operands) > 0 {
		return fmt.Errorf("config history: unexpected argument %q", operands[0])
	}
	return ops.ConfigHistory(ctx, s.target(stderr), asJSON, stdout)
}

func configDiff(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	var asJSON bool
	s := configSettings("diff", getenv, &asJSON)
	operands, err := s.parseOperands(args, "Usage: broker config diff [A] [B] [flags]\nSays what revision B (default: the newest) configures differently from revision A (default: the valid one before B), one change per line.", stdout)
	if err != nil {
		return err
	}
	revs, err := revisionOperands("diff", operands, 2)
	if err != nil {
		return err
	}
	revs = append(revs, 0, 0)
	return ops.ConfigDiff(ctx, s.target(stderr), revs[0], revs[1], asJSON, stdout)
}

func configRollback(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	var r ops.Rollback
	s := configSettings("rollback", getenv, &r.JSON)
	s.set.String(&r.By, "by", "", ops.Operator(getenv), "`name` of who rolls back, shown by history")
	operands, err := s.parseOperands(args, "Usage: broker config rollback [N] [flags]\nWrites revision N (default: the valid one before the newest) again, as a new revision every replica applies.", stdout)
	if err != nil {
		return err
	}
	revs, err := revisionOperands("rollback", operands, 1)
	if err != nil {
		return err
	}
	if len(revs) == 1 {
		r.Revision = revs[0]
	}
	return ops.RollbackConfig(ctx, s.target(stderr), r, getenv, stdout)
}

func configSet(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	var c ops.ConfigSet
	s := configSettings("set", getenv, &c.JSON)
	s.set.String(&c.By, "by", "", ops.Operator(getenv), "`name` of who writes it, shown by history")
	s.subjectSetting()
	s.loggerSubjectSetting()
	s.glConfigSetting()
	operands, err := s.parseOperands(args, `Usage: broker config set FILE [flags]
Writes FILE as a new revision of the fleet's configuration, which every replica applies within a second.
FILE is a pools file, as BROKER_POOLS (the policy and in-flight bound are kept from the revision in
force, or the defaults), or a whole fleet document: {"version": 1, "pools": [...], "policy": {...},
"inflight_bound": "5m"}, as "broker config show --json" prints under "document". It is validated as
a replica validates its settings at startup, and with --gl-config checked against gecholog's config.`, stdout)
	if err != nil {
		return err
	}
	switch {
	case len(operands) == 0:
		return fmt.Errorf("config set: give the FILE, e.g. broker config set pools.json")
	case len(operands) > 1:
		return fmt.Errorf("config set: one FILE at a time, got %q", operands)
	}
	c.File = operands[0]
	pools, err := readConfigFile(&c)
	if err != nil {
		return fmt.Errorf("config set %s: %s; nothing written", safetext.Clip(c.File, safetext.MaxShown), safetext.Line(err.Error()))
	}
	if s.glConfig != "" {
		if err := ops.CheckAtStartup(s.glConfig, pools, s.wiring(), nil); err != nil {
			return fmt.Errorf("config set %s: %w; nothing written", safetext.Clip(c.File, safetext.MaxShown), err)
		}
	}
	return ops.SetConfig(ctx, s.target(stderr), c, getenv, stdout)
}

// readConfigFile reads c.File into c.Doc, with the reader and validation
// a replica's startup uses: a fleet document (it has "version") is read
// as a replica reads a revision, anything else as a pools file. It
// returns the pools.
func readConfigFile(c *ops.ConfigSet) ([]broker.Pool, error) {
	data, err := readPoolsFile(c.File)
	if err != nil {
		return nil, err
	}
	var top map[string]json.RawMessage
	if json.Unmarshal(bytes.TrimSpace(data), &top) == nil && top["version"] != nil {
		doc, err := kv.DecodeFleetConfig(data)
		if err != nil {
			return nil, err
		}
		pools, _, _, err := doc.Settings()
		c.Doc = doc
		return pools, err
	}
	pools, err := decodePools(data)
	if err != nil {
		return nil, err
	}
	// The defaults, as serve has them with no setting given; SetConfig
	// keeps the policy in force instead when there is one.
	c.Doc = kv.NewFleetConfig(pools, broker.Policy{DisabledTime: broker.DefaultDisabledTime}, 0)
	c.PoolsOnly = true
	return pools, nil
}
