package demo_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
	"go.uber.org/goleak"

	"github.com/gecholog/broker/demo"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestDemoTakesTheDudOutOnBothReplicasAndLeavesNothingRunning: the demo
// starts a server, two replicas and upstreams, and stops every one of them.
func TestDemoTakesTheDudOutOnBothReplicasAndLeavesNothingRunning(t *testing.T) {
	is := is.New(t)
	var out, errs bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	is.NoErr(demo.Run(ctx, demo.Options{Requests: 5, DisabledTime: time.Minute}, &out, &errs))
	text := out.String()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the demo printed:\n%s", text)
		}
	})
	failed := strings.Index(text, "randomly selects /azure/dud/ 502 failed. Disabled for 1 minutes")
	is.True(failed > 0)                                                          // the dud fails once
	is.True(!strings.Contains(text[failed+10:], "randomly selects /azure/dud/")) // and is never chosen again
	is.True(strings.Contains(text, "$ nats kv ls gl_broker\n/azure/dud/\n"))     // the bucket lists it

	// The tiers act: tier 0 until its 429, tier 1 only until the PTU's
	// Retry-After has passed, and then tier 0 again.
	act := text[strings.Index(text, "# priority tiers"):]
	limited := strings.Index(act, "selects /openai/ptu/ (tier 0) 429 with Retry-After")
	is.True(limited > 0)                                  // the PTU answers 429 once its quota is spent
	is.True(!strings.Contains(act[:limited], "(tier 1)")) // no call left tier 0 before that
	returned := strings.Index(act, "its Retry-After has passed, and the probe found it answering")
	is.True(returned > limited) // it comes back
	back := strings.LastIndex(act[:returned], "\n")
	is.True(strings.Count(act[limited:back], "(tier 1) 200") > 0)    // tier 1 took the calls meanwhile
	is.True(!strings.Contains(act[limited+10:back], "/openai/ptu/")) // and the PTU none
	is.Equal(strings.Count(act, " 429"), 1)                          // one 429 reached a client: the one that told the broker
	goleak.VerifyNone(t)
}
