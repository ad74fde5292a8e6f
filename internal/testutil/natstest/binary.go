package natstest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gecholog/broker/internal/natsbin"
	"github.com/nats-io/nats-server/v2/server"
)

// NATS210Version is the nats-server that NATS210 provides: the 2.10 line
// is what the gecholog container bundles, at JetStream API level 0, with no
// per-message TTL.
const NATS210Version = "v2.10.27"

// NATS210Env names a nats-server 2.10 binary to use instead of the one
// NATS210 builds.
const NATS210Env = "BROKER_TEST_NATS_SERVER_210"

// nats210Build and natsBuild let one test at a time in a test binary build
// a server; test binaries of other packages are kept apart by the atomic
// rename.
var nats210Build, natsBuild sync.Mutex

// NATS210 returns the path of a nats-server 2.10 binary: $NATS210Env when
// it is set, else the one InstallNATS210 keeps in the user's cache
// directory, which .ci/run fills before the tests run. Building takes half
// a minute the first time and needs the Go module proxy; when it cannot be
// built, the test fails with one line saying what to install. It never
// skips.
func NATS210(t testing.TB) string {
	t.Helper()
	bin := os.Getenv(NATS210Env)
	if bin == "" {
		nats210Build.Lock()
		defer nats210Build.Unlock()
		start := time.Now()
		var built bool
		var err error
		if bin, built, err = InstallNATS210(); err != nil {
			t.Fatalf("natstest: %v", err)
		}
		if built {
			t.Logf("natstest: built nats-server %s into %s in %v", NATS210Version, bin, time.Since(start).Round(time.Second))
		}
	}
	if err := checkVersion(bin); err != nil {
		t.Fatalf("natstest: %v", err)
	}
	return bin
}

// InstallNATS210 is natsbin.Install of NATS210Version, with the hint of
// NATS210Env in its error.
func InstallNATS210() (path string, built bool, err error) {
	path, built, err = natsbin.Install(NATS210Version)
	if err != nil {
		err = fmt.Errorf("%w, or set %s to a nats-server 2.10 binary", err, NATS210Env)
	}
	return path, built, err
}

// NATS returns the path of the nats-server this module embeds, as a
// binary to run as processes that can be killed outright: built into the
// user's cache folder by natsbin.Install when missing (.ci/run builds it
// first). When it cannot be built, the test fails with one line saying
// what to install.
func NATS(t testing.TB) string {
	t.Helper()
	natsBuild.Lock()
	defer natsBuild.Unlock()
	start := time.Now()
	bin, built, err := natsbin.Install(natsbin.Embedded)
	if err != nil {
		t.Fatalf("natstest: %v", err)
	}
	if built {
		t.Logf("natstest: built nats-server %s into %s in %v", natsbin.Embedded, bin, time.Since(start).Round(time.Second))
	}
	return bin
}

// checkVersion says why bin is not a nats-server of the 2.10 line, if it
// is not.
func checkVersion(bin string) error {
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s --version: %v: %s", bin, err, bytes.TrimSpace(out))
	}
	if !strings.Contains(string(out), "v2.10.") {
		return fmt.Errorf("%s is %s, not nats-server 2.10; set %s to a 2.10 binary or unset it", bin, bytes.TrimSpace(out), NATS210Env)
	}
	return nil
}

func oneLine(err error) string { return strings.Join(strings.Fields(err.Error()), " ") }

// Binary is a nats-server running as its own process, started by
// StartBinary.
type Binary struct {
	url  string
	cmd  *exec.Cmd
	log  *Buffer
	once sync.Once
	done chan struct{} // closed when the process has exited
	err  error         // how it exited; read after done
}

// StartBinary runs the nats-server binary at path on loopback, with
// JetStream (its store in a temporary directory), and returns once it
// accepts connections. The options say the port (default: any free one),
// the store directory, whether JetStream is on, a server name and a
// token; an option that sets anything else fails the test. The server's
// log is printed when the test fails. The process is stopped and waited
// for when the test ends, if Shutdown has not been called.
func StartBinary(t testing.TB, path string, opts ...Option) *Binary {
	t.Helper()
	o := &server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: t.TempDir()}
	for _, opt := range opts {
		opt(o)
	}
	if o.Host != "127.0.0.1" || o.Username != "" || o.Users != nil || o.Nkeys != nil || o.TLS || o.Cluster.Port != 0 || o.Routes != nil || o.Accounts != nil {
		t.Fatal("natstest: StartBinary takes only the port, store directory, JetStream, server name and token options")
	}
	args := []string{"-a", o.Host, "-p", strconv.Itoa(o.Port)}
	if o.JetStream {
		args = append(args, "-js", "-sd", o.StoreDir)
	}
	if o.ServerName != "" {
		args = append(args, "-n", o.ServerName)
	}
	if o.Authorization != "" {
		args = append(args, "--auth", o.Authorization)
	}
	b := &Binary{log: &Buffer{}, done: make(chan struct{})}
	b.cmd = exec.Command(path, args...)
	b.cmd.Stdout, b.cmd.Stderr = b.log, b.log
	b.cmd.SysProcAttr = sysProcAttr()
	if err := b.cmd.Start(); err != nil {
		t.Fatalf("natstest: start %s: %v", path, err)
	}
	go func() {
		b.err = b.cmd.Wait()
		close(b.done)
	}()
	t.Cleanup(func() {
		b.Shutdown()
		if t.Failed() {
			t.Logf("nats-server %s logged:\n%s", path, b.log.String())
		}
	})
	deadline := time.After(ReadyWithin)
	for {
		if m := listening.FindStringSubmatch(b.log.String()); m != nil && strings.Contains(b.log.String(), "Server is ready") {
			b.url = "nats://" + net.JoinHostPort(o.Host, m[1])
			return b
		}
		select {
		case <-b.done:
			t.Fatalf("natstest: nats-server exited before it was ready (%v):\n%s", b.err, b.log.String())
		case <-deadline:
			t.Fatalf("natstest: nats-server not ready within %v:\n%s", ReadyWithin, b.log.String())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

var listening = regexp.MustCompile(`Listening for client connections on [^\s]*:(\d+)`)

// ClientURL is the URL clients connect to.
func (b *Binary) ClientURL() string { return b.url }

// Shutdown stops the server, as SIGTERM does, and waits until the process
// has exited; after 10 s it kills it. Calling it again does nothing.
func (b *Binary) Shutdown() {
	b.once.Do(func() {
		_ = b.cmd.Process.Signal(os.Interrupt)
		select {
		case <-b.done:
		case <-time.After(10 * time.Second):
			_ = b.cmd.Process.Kill()
			<-b.done
		}
	})
}

// Log returns what the server has logged so far.
func (b *Binary) Log() string { return b.log.String() }

// Buffer collects output, a process's or a logger's; safe for concurrent
// use.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *Buffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *Buffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
