package replica

import (
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"

	"github.com/nats-io/nats.go"
)

// A connection that breaks mid-write is no error to fix: the reconnect
// mends it, and it is logged as a warning; a refused permission is.
func TestAConnectionBrokenMidWriteIsTransientAndAPermissionIsNot(t *testing.T) {
	for err, want := range map[error]bool{
		&net.OpError{Op: "write", Net: "tcp", Err: syscall.ECONNRESET}: true,
		fmt.Errorf("flush: %w", syscall.EPIPE):                         true,
		io.EOF:                                                         true,
		nats.ErrConnectionClosed:                                       true,
		nats.ErrPermissionViolation:                                    false,
		fmt.Errorf("nats: %w", nats.ErrSlowConsumer):                   false,
	} {
		if got := transient(err); got != want {
			t.Errorf("transient(%v) = %v, want %v", err, got, want)
		}
	}
}
