// Command install puts the nats-server binaries the tests run as processes
// where they look for them, building those that are missing, and prints
// their paths: the 2.10 line the gecholog container ships (unless
// BROKER_TEST_NATS_SERVER_210 names one) and the version this module
// embeds. .ci/run runs it before the tests, so that test binaries running
// in parallel do not each build them.
package main

import (
	"fmt"
	"os"

	"github.com/gecholog/broker/internal/natsbin"
	"github.com/gecholog/broker/internal/testutil/natstest"
)

func main() {
	versions := []string{natsbin.Embedded}
	if p := os.Getenv(natstest.NATS210Env); p != "" {
		fmt.Printf("install: %s names %s\n", natstest.NATS210Env, p)
	} else {
		versions = append(versions, natstest.NATS210Version)
	}
	for _, v := range versions {
		path, built, err := natsbin.Install(v)
		if err != nil {
			fmt.Fprintln(os.Stderr, "install:", err)
			os.Exit(1)
		}
		verb := "found"
		if built {
			verb = "built"
		}
		fmt.Printf("install: %s nats-server %s: %s\n", verb, v, path)
	}
}
