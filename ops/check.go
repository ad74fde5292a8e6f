package ops

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strconv"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/gecholog"
)

// DefaultGLConfig is the file check reads when given none.
const DefaultGLConfig = "gl_config.json"

// Check prints each way the gl_config.json at path fails to route pools
// through a broker on subject, one line each, and fails if there is any.
func Check(path string, pools []broker.Pool, subject string, stdout io.Writer) error {
	problems, err := gecholog.CheckGLConfigFile(path, pools, subject)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("check %s: %w (give its path: broker check PATH, or set BROKER_GL_CONFIG)", path, err)
	}
	if err != nil {
		return fmt.Errorf("check %s: %w", path, err)
	}
	for _, p := range problems {
		fmt.Fprintln(stdout, p)
	}
	if len(problems) > 0 {
		return fmt.Errorf("check: %s in %s", plural(len(problems), "problem"), path)
	}
	routers := 0
	for _, p := range pools {
		routers += len(p.Routers)
	}
	fmt.Fprintf(stdout, "%s: ok (%s, %s, subject %s)\n", path, plural(len(pools), "pool"), plural(routers, "router"), subject)
	return nil
}

// CheckAtStartup refuses to serve when the gl_config.json at path does not
// route pools through this broker. The error is one line with the first
// problem; "broker check" lists them all.
func CheckAtStartup(path string, pools []broker.Pool, subject string) error {
	problems, err := gecholog.CheckGLConfigFile(path, pools, subject)
	switch {
	case err != nil:
		return fmt.Errorf("gl-config %s: %w", path, err)
	case len(problems) == 1:
		return fmt.Errorf("gl-config %s: 1 problem: %s", path, problems[0])
	case len(problems) > 1:
		return fmt.Errorf("gl-config %s: %d problems: %s (run \"broker check %s\" for all)", path, len(problems), problems[0], path)
	}
	return nil
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}
