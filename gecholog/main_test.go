package gecholog_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine outlives them: the
// handler starts none, and the brokers behind it are closed by each test's
// cleanup.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
