package statuspage_test

import (
	"flag"
	"os"
	"testing"

	"github.com/gecholog/broker/internal/testutil/natstest"
	"go.uber.org/goleak"
)

// screenshotFlag asks for the page's screenshots at a path of one's own,
// for a human to look at or for the README:
//
//	go test ./statuspage -run TestStatusPage -args -screenshot=/tmp/page.png
//
// BROKER_SCREENSHOT does the same where -args cannot be used, as with
// ./..., whose other packages have no such flag. Either way the test's
// temporary folder holds them too.
var screenshotFlag = flag.String("screenshot", "", "also save the status page's screenshot to this `path` (PNG); the phone's goes beside it with -phone before .png")

// TestMain fails the package's tests if any goroutine outlives them: every
// replica stopped, every browser closed, every event stream ended.
func TestMain(m *testing.M) {
	flag.Parse()
	goleak.VerifyTestMain(m, natstest.LeakOptions()...)
}

// screenshotPath is where a screenshot is asked for; "" when it is not.
func screenshotPath() string {
	if *screenshotFlag != "" {
		return *screenshotFlag
	}
	return os.Getenv("BROKER_SCREENSHOT")
}
