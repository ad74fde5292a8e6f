// Command broker is the gecholog load-balancing and failover processor.
//
//	broker [flags]                      serve: answer gecholog's processor calls
//	broker demo                         a self-contained run with nothing installed
//	broker status [--json]              every pool and router with its state
//	broker disable ROUTER [--for D]     take a router out by hand, on every replica
//	broker enable ROUTER                lift any disable now, on every replica
//	broker check [gl_config.json]       do the pools and gecholog's config agree?
//	broker healthcheck                  is the replica on BROKER_METRICS_ADDR ready? (for container healthchecks)
//	broker bench [-mode M]              load and timing measurements on loopback
//
// Run "broker -h" for the settings; each is a flag and an environment
// variable.
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
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "broker:", err)
		os.Exit(1)
	}
}

// run is the whole program: main only supplies the process's arguments,
// environment and output, so tests run it in-process.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cmd := "serve"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "serve":
		err = serveCommand(ctx, args, getenv, stdout, stderr)
	case "demo":
		err = demoCommand(ctx, args, getenv, stdout, stderr)
	case "status":
		err = statusCommand(ctx, args, getenv, stdout, stderr)
	case "disable":
		err = disableCommand(ctx, args, getenv, stdout, stderr)
	case "enable":
		err = enableCommand(ctx, args, getenv, stdout, stderr)
	case "check":
		err = checkCommand(ctx, args, getenv, stdout, stderr)
	case "healthcheck":
		err = healthcheckCommand(ctx, args, getenv, stdout, stderr)
	case "bench":
		err = benchCommand(ctx, args, getenv, stdout, stderr)
	default:
		return fmt.Errorf("unknown command %q: the commands are serve (the default), demo, status, disable, enable, check, healthcheck and bench", cmd)
	}
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	return err
}
