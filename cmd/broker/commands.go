package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/demo"
	"github.com/gecholog/broker/kv"
	"github.com/gecholog/broker/ops"
	"github.com/gecholog/broker/replica"
)

// serveCommand answers gecholog's processor calls until ctx ends.
func serveCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	s := newSettings("serve", getenv)
	s.serving()
	if err := s.parse(args, "Usage: broker [serve] [flags]", stdout); err != nil {
		return err
	}
	log := s.logger(stderr)
	if s.glConfig != "" {
		if err := ops.CheckAtStartup(s.glConfig, s.Pools, s.wiring(), log); err != nil {
			return err
		}
	}
	return replica.Run(ctx, s.replicaConfig(log))
}

// demoCommand runs the broker for real with nothing installed.
func demoCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	s := newSettings("demo", getenv)
	var requests int
	s.set.Int(&requests, "requests", "", 10, 1, 10000, "`requests` to make after the dud has failed")
	s.disabledTimeSetting()
	if err := s.parse(args, "Usage: broker demo [flags]", stdout); err != nil {
		return err
	}
	return demo.Run(ctx, demo.Options{Requests: requests, DisabledTime: s.Policy.DisabledTime}, stdout, stderr)
}

func statusCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	s := newSettings("status", getenv)
	s.connection()
	// The replicas hold every record to their failure policy; status shows
	// what they act on, so it reads the same settings they do.
	s.policyLimits()
	var o ops.StatusOptions
	s.set.Bool(&o.JSON, "json", "", "print a JSON array for scripts instead of the table")
	s.set.Bool(&o.Watch, "watch", "", "redraw the table every second until interrupted, as watch(1) would")
	s.set.Bool(&o.Replicas, "replicas", "", "list the replicas heard and the configuration revision each runs instead of the routers (with --json, a JSON array of them)")
	operands, err := s.parseOperands(args, "Usage: broker status [flags]\nShows every pool router as the replicas act on it; give it the processor's DISABLED_TIME and BROKER_BACKOFF_CAP.", stdout)
	if err != nil {
		return err
	}
	if len(operands) > 0 {
		return fmt.Errorf("unexpected argument %q: status shows every router", operands[0])
	}
	o.Policy = s.Policy
	o.PolicyGiven = s.set.Given("disabled-time") || s.set.Given("backoff-cap") || s.set.Given("probe-timeout")
	return ops.Status(ctx, s.target(stderr), o, stdout)
}

func disableCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	s := newSettings("disable", getenv)
	s.connection()
	var d ops.Disable
	s.set.Var((*forTime)(&d.For), "for", "", "how long, as a `duration` such as 30m or 2h; without it, until enabled by hand")
	s.set.String(&d.Reason, "reason", "", ops.DefaultReason, "`text` saying why, shown by status")
	s.set.String(&d.By, "by", "", ops.Operator(getenv), "`name` of who disables it, shown by status")
	s.set.Bool(&d.Force, "force", "", "disable a router that no configured pool has (for replicas with other pools)")
	operands, err := s.parseOperands(args, "Usage: broker disable ROUTER [flags]", stdout)
	if err != nil {
		return err
	}
	if d.Router, err = oneRouter("disable", operands); err != nil {
		return err
	}
	return ops.DisableRouter(ctx, s.target(stderr), d, getenv, stdout)
}

func enableCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	s := newSettings("enable", getenv)
	s.connection()
	operands, err := s.parseOperands(args, "Usage: broker enable ROUTER [flags]", stdout)
	if err != nil {
		return err
	}
	// Any key the bucket may hold, router path or not, so that every key
	// status lists can be removed; the bucket is asked whether it holds
	// one that is no router path.
	router, err := oneRouter("enable", operands)
	if err != nil && len(operands) == 1 && kv.LiteralKey(operands[0]) {
		router, err = operands[0], nil
	}
	if err != nil {
		return err
	}
	return ops.EnableRouter(ctx, s.target(stderr), router, stdout)
}

// oneRouter is the single ROUTER operand of cmd.
func oneRouter(cmd string, operands []string) (string, error) {
	switch {
	case len(operands) == 0:
		return "", fmt.Errorf("%s: give the ROUTER, e.g. broker %s /azure/gpt4/", cmd, cmd)
	case len(operands) > 1:
		return "", fmt.Errorf("%s: one ROUTER at a time, got %q", cmd, operands)
	case !broker.ValidPath(operands[0]):
		return "", fmt.Errorf("router %q: a router path starts and ends with / and holds only letters, digits and /", operands[0])
	}
	return operands[0], nil
}

// checkCommand reads the settings the processor reads, so that "broker check" in
// the broker's container checks what the broker serves.
func checkCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	s := newSettings("check", getenv)
	s.poolsSetting()
	s.subjectSetting()
	s.loggerSubjectSetting()
	s.sessionHeaderSetting()
	s.glConfigSetting()
	operands, err := s.parseOperands(args, "Usage: broker check [flags] [gl_config.json]\nChecks that gecholog's gl_config.json routes the pools through the broker; each problem is one line,\nand so is each piece of advice (\"advice: ...\"), which names an extra the file leaves off.\nIt exits non-zero only on a problem.", stdout)
	if err != nil {
		return err
	}
	path := s.glConfig
	switch len(operands) {
	case 0:
		if path == "" {
			path = ops.DefaultGLConfig
		}
	case 1:
		path = operands[0]
	default:
		return fmt.Errorf("check: one gl_config.json at a time, not %q and %q", operands[0], operands[1])
	}
	return ops.Check(path, s.Pools, s.wiring(), stdout)
}

func healthcheckCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	s := newSettings("healthcheck", getenv)
	s.metricsAddrSetting()
	if err := s.parse(args, "Usage: broker healthcheck [flags]", stdout); err != nil {
		return err
	}
	return ops.Healthcheck(ctx, s.MetricsAddr, stdout)
}

func explainCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	s := newSettings("explain", getenv)
	s.metricsAddrSetting()
	var o ops.ExplainOptions
	s.set.Bool(&o.JSON, "json", "", "print the replica's answer as JSON for scripts instead of the table")
	s.set.String(&o.Session, "session", "", "", "a session header's `value`, for a pool with affinity: also say where that session's calls go (sent to the replica, never printed)")
	operands, err := s.parseOperands(args, "Usage: broker explain INGRESS [flags]\nSays why the calls for the pool INGRESS (e.g. /azure/) go where they go, as the replica on BROKER_METRICS_ADDR sees it.", stdout)
	if err != nil {
		return err
	}
	switch {
	case len(operands) == 0:
		return errors.New("explain: give the pool's INGRESS, e.g. broker explain /azure/")
	case len(operands) > 1:
		return fmt.Errorf("explain: one INGRESS at a time, got %d", len(operands))
	}
	return ops.Explain(ctx, s.MetricsAddr, operands[0], o, stdout)
}
