package kv_test

import (
	"testing"

	"github.com/gecholog/broker/internal/testutil/natstest"
	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine outlives them: each
// watcher is stopped by the function Watch returned, each store's janitor
// by Close, each connection closed. nats-server's own goroutines end
// within Shutdown and WaitForShutdown, which natstest's cleanup calls, so
// nothing of the server's needs ignoring.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, natstest.LeakOptions()...)
}
