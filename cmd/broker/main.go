// Command broker is the gecholog load-balancing and failover processor.
//
//	broker [flags]                      serve: answer gecholog's processor calls
//	broker demo                         a self-contained run with nothing installed
//	broker status [--json|--watch]      every pool and router with its state, every replica's configuration revision
//	                                    (exit status 3: the bucket did not answer; printed the server's own copy, marked stale)
//	broker status --replicas [--json]   every replica heard and the configuration revision it runs
//	broker disable ROUTER [--for D]     take a router out by hand, on every replica
//	broker enable ROUTER                lift any disable now, on every replica
//	broker check [gl_config.json]       do the pools and gecholog's config agree?
//	broker explain INGRESS [--json] [--session V]
//	                                    why do the pool's calls go where they go? (asks BROKER_METRICS_ADDR)
//	broker config show|set|history|diff|rollback
//	                                    the fleet's configuration in the bucket: every
//	                                    replica runs by its newest valid revision
//	broker healthcheck                  is the replica on BROKER_METRICS_ADDR ready? (for container healthchecks)
//
// Run "broker -h" for the settings; each is a flag and an environment
// variable. The measurements are a command of their own, broker-bench.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	// The time zones of budgets from the binary, not the machine: every
	// replica must begin a budget's day at the same instant, whatever its
	// image holds.
	_ "time/tzdata"

	"github.com/gecholog/broker/ops"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "broker:", err)
		os.Exit(exitCode(err))
	}
}

// exitCode is the program's exit status for err: 3 when status printed a
// stale view (the bucket did not answer, and what was printed is one
// server's copy of it), so that a script tells it from the truth and from
// a failure to print anything, which is 1.
func exitCode(err error) int {
	if errors.Is(err, ops.ErrStale) {
		return 3
	}
	return 1
}

// commands are the broker's commands by name.
var commands = map[string]func(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error{
	"serve":       serveCommand,
	"demo":        demoCommand,
	"status":      statusCommand,
	"disable":     disableCommand,
	"enable":      enableCommand,
	"check":       checkCommand,
	"explain":     explainCommand,
	"config":      configCommand,
	"healthcheck": healthcheckCommand,
}

// run is the whole program: main only supplies the process's arguments,
// environment and output, so tests run it in-process.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	name := "serve"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		name, args = args[0], args[1:]
	}
	cmd := commands[name]
	if cmd == nil {
		return fmt.Errorf("unknown command %q: the commands are serve (the default), demo, status, disable, enable, check, explain, config and healthcheck", name)
	}
	err := cmd(ctx, args, getenv, stdout, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	return err
}
