//go:build !unix

package natstest

// reserve: without flock, FreePorts relies on its listen check alone.
func reserve(int) bool { return true }
