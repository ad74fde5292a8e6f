//go:build unix

package natstest

import (
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
)

// TestAPortHandedOutIsNeverHandedOutAgain: ports FreePorts gave are
// reserved, and one another test process holds is skipped.
func TestAPortHandedOutIsNeverHandedOutAgain(t *testing.T) {
	seen := map[int]bool{}
	for range 50 {
		ports, err := FreePorts(4)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range ports {
			if seen[p] {
				t.Fatalf("port %d handed out twice", p)
			}
			seen[p] = true
			if reserve(p) {
				t.Fatalf("port %d handed out, and reserved again", p)
			}
		}
	}

	// Another process's lock: a second open file, locked as another
	// process's FreePorts would.
	other := 10000 + os.Getpid()%20000
	f, err := os.OpenFile(filepath.Join(os.TempDir(), "natstest-ports", strconv.Itoa(other)), os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Skipf("port %d is held by a test beside this one", other)
	}
	if reserve(other) {
		t.Fatalf("port %d reserved although another holds it", other)
	}
}
