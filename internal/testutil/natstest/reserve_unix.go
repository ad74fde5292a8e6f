//go:build unix

package natstest

import (
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// reserve claims port for this process, machine-wide, until it exits: an
// exclusive lock on a file named for the port, which no other test
// process (nor this one, through another open) can take meanwhile. The
// kernel drops the lock when the process ends, however it ends, so a
// killed test leaves nothing reserved. It says false when the port is
// someone else's.
//
// A port free when FreePorts looked is free only until someone binds it:
// with several test packages at once, another's FreePorts found a port
// this test's server had been stopped on, and the server could not come
// back on it (nats-server 2.10: "bind: address already in use", the
// count's busy run on 6754f60). Ports handed out once are never handed
// out again while the process that took them runs.
func reserve(port int) bool {
	dir := filepath.Join(os.TempDir(), "natstest-ports")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return true // nowhere to keep reservations: the listen check alone
	}
	f, err := os.OpenFile(filepath.Join(dir, strconv.Itoa(port)), os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return true
	}
	if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
		f.Close()
		return false
	}
	reserved = append(reserved, f) // held open, and so locked, for the process's life
	return true
}
