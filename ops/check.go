package ops

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"strconv"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/gecholog"
)

// DefaultGLConfig is the file check reads when given none.
const DefaultGLConfig = "gl_config.json"

// Check prints each way the gl_config.json at path fails to route pools
// through a broker wired as w, one line each: the errors, then the advice
// (marked "advice:"). It fails if there is any error; advice only names an
// extra the file leaves off, so a file with nothing else is ok.
func Check(path string, pools []broker.Pool, w gecholog.Wiring, stdout io.Writer) error {
	problems, err := gecholog.CheckGLConfigFile(path, pools, w)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("check %s: %w (give its path: broker check PATH, or set BROKER_GL_CONFIG)", path, err)
	}
	if err != nil {
		return fmt.Errorf("check %s: %w", path, err)
	}
	errs, advice := split(problems)
	for _, p := range errs {
		fmt.Fprintln(stdout, p)
	}
	for _, p := range advice {
		fmt.Fprintln(stdout, p)
	}
	if len(errs) > 0 {
		return fmt.Errorf("check: %s in %s", plural(len(errs), "problem"), path)
	}
	routers := 0
	for _, p := range pools {
		routers += len(p.Routers)
	}
	fmt.Fprintf(stdout, "%s: ok (%s, %s, subject %s)\n", path, plural(len(pools), "pool"), plural(routers, "router"), w.Subject)
	return nil
}

// CheckAtStartup refuses to serve when the gl_config.json at path does not
// route pools through this broker. The error is one line with the first
// problem; "broker check" lists them all. Advice does not stop the start:
// each piece is logged once to log as a warning (nil: not logged).
func CheckAtStartup(path string, pools []broker.Pool, w gecholog.Wiring, log *slog.Logger) error {
	problems, err := gecholog.CheckGLConfigFile(path, pools, w)
	errs, advice := split(problems)
	switch {
	case err != nil:
		return fmt.Errorf("gl-config %s: %w", path, err)
	case len(errs) == 1:
		return fmt.Errorf("gl-config %s: 1 problem: %s", path, errs[0])
	case len(errs) > 1:
		return fmt.Errorf("gl-config %s: %d problems: %s (run \"broker check %s\" for all)", path, len(errs), errs[0], path)
	}
	if log != nil {
		for _, a := range advice {
			log.Warn("gl-config advice", slog.String("gl_config", path), slog.String("field", a.Field), slog.String("advice", a.Fix))
		}
	}
	return nil
}

// split parts problems into errors and advice, each in the order found.
func split(problems []gecholog.Problem) (errs, advice []gecholog.Problem) {
	for _, p := range problems {
		if p.Advice {
			advice = append(advice, p)
		} else {
			errs = append(errs, p)
		}
	}
	return errs, advice
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}
