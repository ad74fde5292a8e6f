package ops_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/kv"
	"github.com/gecholog/broker/ops"
	"github.com/gecholog/broker/replica"
)

// TestEnableWhoseWritesOthersBeatRemovesTheLiveDisableTheyLeave: `broker
// enable` of a router whose key holds no live record writes a delete
// marker at the revision it read; another write that comes first makes it
// read and try again. Whenever the bucket then holds a live disable (a
// replica's failure disable that came first), enable removes it and says
// so; it says the router is already enabled only when the bucket holds no
// live record for it, however many writes beat its own.
func TestEnableWhoseWritesOthersBeatRemovesTheLiveDisableTheyLeave(t *testing.T) {
	t.Parallel()
	const already = "/azure/gpt4/ is already enabled: bucket gl_broker holds no record for it"
	const removed = "enabled /azure/gpt4/ in bucket gl_broker; removed the automatic disable by replica-b (egress_status_code 502"
	for _, tc := range []struct {
		name string
		beat func(n int) write // before the enable's n-th write, from 1
		says string
	}{
		{"once by a release", upTo(1, release), already},
		{"every time by a release", always(release), already},
		{"by a replica's disable", upTo(1, disable), removed},
		{"three times by a release, then each time by a replica's disable", func(n int) write {
			if n <= 3 {
				return release
			}
			return disable
		}, removed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			is := is.New(t)
			r := startRace(t)
			out, beaten, err := r.enable(t, context.Background(), tc.beat, nil)
			t.Logf("%d of the enable's writes beaten:\n%s", beaten, out)
			is.NoErr(err)
			is.True(beaten > 0) // the race happened
			if !strings.HasPrefix(out, tc.says) {
				t.Errorf("enable says %q, want it to begin %q", out, tc.says)
			}
			last, live, err := r.writer.Latest(context.Background(), router)
			is.NoErr(err)
			if live {
				t.Errorf("the bucket holds a live record after the enable: %+v at revision %d", last.Record, last.Revision)
			}
		})
	}
}

// TestEnableCancelledWhileOthersBeatItsWritesEndsAtOnceWithTheCancellation:
// an enable that keeps losing its writes ends at once when its context is
// cancelled, whether it was waiting for a write's answer or pausing before
// the next (TestBackoffWaitEndsWithItsContext shows the pause alone), with
// the cancellation as its error and nothing printed as done.
func TestEnableCancelledWhileOthersBeatItsWritesEndsAtOnceWithTheCancellation(t *testing.T) {
	t.Parallel()
	is := is.New(t)
	r := startRace(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var cancelled time.Time
	out, beaten, err := r.enable(t, ctx, always(release), func(n int) {
		if n == 2 { // its second write passed on, to lose
			cancel()
			cancelled = time.Now()
		}
	})
	took := time.Since(cancelled)
	t.Logf("%d writes beaten; ended %v after the cancel: %v", beaten, took.Round(time.Millisecond), err)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("enable ended with %v, want context.Canceled", err)
	}
	is.True(!cancelled.IsZero()) // cancelled while it ran
	is.Equal(out, "")            // nothing said as done
	if took > time.Second {      // its pauses are a fraction of it
		t.Errorf("enable ended %v after its context was cancelled", took)
	}
}

// router is the router the races are run on.
const router = "/azure/gpt4/"

// write is what a competing writer writes to router's key.
type write int

const (
	// nothing lets the enable's write through unbeaten.
	nothing write = iota
	// release is a delete marker, as another operator's enable writes.
	release
	// disable is a replica's failure disable, compare-and-set as a
	// replica writes it.
	disable
)

// upTo beats the first n writes with w and none after.
func upTo(n int, w write) func(int) write {
	return func(i int) write {
		if i <= n {
			return w
		}
		return nothing
	}
}

// always beats every write with w.
func always(w write) func(int) write { return func(int) write { return w } }

// race is a bucket that `broker enable` reaches through a proxy holding
// its writes to router's key, and a writer that reaches it directly.
type race struct {
	proxy  *natstest.Proxy
	writer *kv.Store
	target ops.Target
}

func startRace(t *testing.T) *race {
	t.Helper()
	s := natstest.Start(t)
	writer, err := kv.Open(context.Background(), natstest.JetStream(t, s), kv.Config{Bucket: replica.DefaultBucket, Owner: "replica-b"})
	if err != nil {
		t.Fatalf("open the bucket: %v", err)
	}
	t.Cleanup(writer.Close)
	proxy := natstest.StartProxy(t, s.ClientURL())
	return &race{proxy: proxy, writer: writer, target: ops.Target{
		NATS: natsconn.Settings{Servers: proxy.ClientURL()}, Bucket: replica.DefaultBucket, Pools: broker.DefaultPools(),
	}}
}

// enable runs `broker enable router` with ctx and, before passing each of
// its writes to router's key on to the server, has the writer write
// beat(n) first (n from 1), then calls passed(n) if not nil. It returns what the enable
// printed, how many of its writes were beaten and its error.
func (r *race) enable(t *testing.T, ctx context.Context, beat func(int) write, passed func(int)) (out string, beaten int, err error) {
	t.Helper()
	subject := "$KV." + replica.DefaultBucket + "." + router
	r.proxy.Hold(func(s string) bool { return s == subject })
	type result struct {
		out string
		err error
	}
	done := make(chan result, 1)
	go func() {
		var buf bytes.Buffer
		err := ops.EnableRouter(ctx, r.target, router, &buf)
		done <- result{buf.String(), err}
	}()
	deadline := time.NewTimer(20 * time.Second)
	defer deadline.Stop()
	for n := 1; ; n++ {
		held, more := r.proxy.Holding(subject)
		for held == 0 {
			select {
			case res := <-done:
				return res.out, beaten, res.err
			case <-more:
			case <-deadline.C:
				t.Fatalf("enable neither wrote %s a %dth time nor ended within 20 s", router, n)
			}
			held, more = r.proxy.Holding(subject)
		}
		switch beat(n) {
		case release:
			r.write(t, func(ctx context.Context) (uint64, error) { return r.writer.Delete(ctx, router, 0) })
			beaten++
		case disable:
			r.write(t, func(ctx context.Context) (uint64, error) {
				last, _, err := r.writer.Latest(ctx, router)
				if err != nil {
					return 0, err
				}
				now := time.Now()
				return r.writer.Update(ctx, broker.Record{Router: router, Status: 502, Reason: "egress_status_code 502",
					At: now, Until: now.Add(10 * time.Minute), By: "replica-b"}, last.Revision)
			})
			beaten++
		}
		r.proxy.Pass()
		if passed != nil {
			passed(n)
		}
	}
}

// write runs w, the writer's write, within 5 s, and fails the test if it fails.
func (r *race) write(t *testing.T, w func(context.Context) (uint64, error)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := w(ctx); err != nil {
		t.Fatalf("the competing write: %v", err)
	}
}
