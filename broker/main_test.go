package broker_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine outlives them: a
// broker's background writes and its timer end in Close, which every test
// calls through its cleanup.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
