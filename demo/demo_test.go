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
	failed := strings.Index(text, "randomly selects /azure/dud/ 502 failed. Disabled for 1 minutes")
	is.True(failed > 0)                                                          // the dud fails once
	is.True(!strings.Contains(text[failed+10:], "randomly selects /azure/dud/")) // and is never chosen again
	is.True(strings.Contains(text, "$ nats kv ls gl_broker\n/azure/dud/\n"))     // the bucket lists it
	goleak.VerifyNone(t)
}
