package ops

import (
	"testing"

	"github.com/gecholog/broker/internal/testutil/natstest"
	"go.uber.org/goleak"
)

// TestMain fails the package when a test leaves a goroutine running.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, natstest.LeakOptions()...)
}
