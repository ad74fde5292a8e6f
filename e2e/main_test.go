// Package e2e tests the broker as deployed: real replica processes on a real
// NATS server, driven the way the gecholog gateway drives them.
package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// brokerBin is the broker binary that TestMain builds once for every test.
var brokerBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "broker-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	brokerBin = filepath.Join(dir, "broker")
	// The race detector is on in the replicas too: a race reported by any of
	// them fails the test that started it.
	build := exec.Command("go", "build", "-race", "-o", brokerBin, "./cmd/broker")
	build.Dir = ".." // the module root
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: go build -race ./cmd/broker: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
