package replica_test

import (
	"testing"

	"github.com/gecholog/broker/internal/testutil/natstest"
	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine outlives them: every
// replica stopped, every server shut down.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, natstest.LeakOptions()...)
}
