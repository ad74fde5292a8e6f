package natstest

import "syscall"

// sysProcAttr makes a server process die with the test binary that started
// it, so that a test killed by its timeout leaves no server behind.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
