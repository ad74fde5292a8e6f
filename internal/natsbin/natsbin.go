// Package natsbin builds nats-server binaries of given versions into the
// user's cache folder, once, for the tests and benchmarks that run real
// server processes: the 2.10 line the gecholog container ships, and the
// version this module embeds, as processes that can be killed outright.
package natsbin

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Embedded is the version of the nats-server this module embeds.
var Embedded = "v" + server.VERSION

// Install returns the path of nats-server version in the user's cache
// folder, os.UserCacheDir()/gecholog-broker/nats-server-<version>/nats-server,
// building it there with `go install` first when it is missing (built says
// so; it takes half a minute and the Go module proxy). Its error is one
// line that says what to install.
func Install(version string) (path string, built bool, err error) {
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", false, fmt.Errorf("nats-server %s: no cache directory (%v)", version, err)
	}
	dir := filepath.Join(cache, "gecholog-broker", "nats-server-"+version)
	bin := filepath.Join(dir, "nats-server")
	if _, err := os.Stat(bin); err == nil {
		return bin, false, nil
	}
	if err := build(version, dir, bin); err != nil {
		return "", false, fmt.Errorf("cannot build nats-server %s (%s): run `GOBIN=%s go install github.com/nats-io/nats-server/v2@%s` with the Go module proxy reachable",
			version, strings.Join(strings.Fields(err.Error()), " "), dir, version)
	}
	return bin, true, nil
}

// build installs nats-server into a fresh folder beside dir and renames it
// into place, so that a test binary of another package never runs a
// half-written file.
func build(version, dir, bin string) error {
	goTool, err := exec.LookPath("go")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), "build-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goTool, "install", "github.com/nats-io/nats-server/v2@"+version)
	cmd.Dir = tmp // outside any module: pkg@version ignores the current one anyway
	cmd.Env = append(os.Environ(), "GOBIN="+tmp, "GOWORK=off", "GOFLAGS="+withoutMod(goEnv(goTool, "GOFLAGS")))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go install: %w: %s", err, bytes.TrimSpace(out))
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return os.Rename(filepath.Join(tmp, "nats-server"), bin)
}

// goEnv is go env's value of key, which includes `go env -w` settings.
func goEnv(goTool, key string) string {
	out, err := exec.Command(goTool, "env", key).Output()
	if err != nil {
		return os.Getenv(key)
	}
	return strings.TrimSpace(string(out))
}

// withoutMod drops -mod settings from GOFLAGS: `go install pkg@version`
// refuses -mod=vendor, and the project's module settings are not the
// server's.
func withoutMod(goflags string) string {
	var keep []string
	for _, f := range strings.Fields(goflags) {
		if !strings.HasPrefix(f, "-mod=") && !strings.HasPrefix(f, "--mod=") {
			keep = append(keep, f)
		}
	}
	if len(keep) == 0 {
		// An empty GOFLAGS would let a `go env -w` setting back in.
		return "-buildvcs=auto"
	}
	return strings.Join(keep, " ")
}
