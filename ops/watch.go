package ops

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/gecholog/broker/broker"
)

// WatchEvery is how often status --watch redraws the table.
const WatchEvery = time.Second

// besideWait bounds each read of the bucket beside stale frames: one that
// answers does so in milliseconds, and the next try starts at the next
// frame, so the bucket is drawn again within about besideWait of its
// answering again.
const besideWait = 2 * time.Second

// clearScreen moves the cursor home and clears the terminal, as watch(1)
// does before each redraw.
const clearScreen = "\x1b[H\x1b[2J"

// watch redraws what status shows every WatchEvery until ctx ends, each
// frame read as plain status reads it (readStatus): while the bucket does
// not answer through n, n's own copy, marked stale; once it answers
// again, the bucket. A read takes at most opTimeout, and the frame before
// stays on the screen meanwhile, with the time it was read. Once a frame
// is stale, the next ones draw n's copy at once, every WatchEvery, while
// a read of the bucket goes on beside them, again each besideWait while
// the bucket does not answer: the frame after its answer is the bucket
// again. A read that fails otherwise (the server gone a while, the bucket
// deleted) is shown in the table's place, and the next redraw tries
// again; only the first fails the command, as plain status would.
func watch(ctx context.Context, t Target, policy broker.Policy, o StatusOptions, n node, stdout io.Writer) error {
	tick := time.NewTicker(WatchEvery)
	defer tick.Stop()
	f := hearFleet(n.nc, t.Bucket)
	defer f.stop()
	var stale error             // why the last frame was n's copy (nil: it was the bucket)
	var beside <-chan freshRead // the read of the bucket under way while stale
	read := func() (v statusView, err error) {
		if stale == nil {
			v, stale, err = readStatus(ctx, t, policy, o.PolicyGiven, n, f)
			return v, err
		}
		if beside == nil {
			beside = t.readBeside(ctx, policy, o.PolicyGiven, n, f)
		}
		select {
		case r := <-beside:
			beside = nil
			if r.err == nil || !unanswered(r.err) {
				stale = nil
				return r.v, r.err
			}
		default:
		}
		return readStale(ctx, t, policy, n, f, stale)
	}
	for first := true; ; first = false {
		v, err := read()
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil && first:
			return err
		}
		var frame strings.Builder
		frame.WriteString(clearScreen)
		fmt.Fprintf(&frame, "Every %v: broker status (Ctrl-C to stop)\n", WatchEvery)
		if err != nil {
			fmt.Fprintf(&frame, "cannot read bucket %s on %s at %s: %s\n", t.Bucket, n.server,
				time.Now().UTC().Format(time.RFC3339), t.NATS.Scrub(err))
		} else {
			printStatus(&frame, o, v) // a strings.Builder takes every write
		}
		if _, err := io.WriteString(stdout, frame.String()); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// freshRead is what a read of the bucket beside stale frames found.
type freshRead struct {
	v   statusView
	err error
}

// readBeside reads the bucket through n, as plain status does when it
// answers, within besideWait, and sends what it found on the channel
// returned, once.
func (t Target) readBeside(ctx context.Context, policy broker.Policy, policyGiven bool, n node, f *fleet) <-chan freshRead {
	found := make(chan freshRead, 1)
	go func() {
		rctx, cancel := context.WithTimeout(ctx, besideWait)
		defer cancel()
		var r freshRead
		r.err = t.readOnce(rctx, n, "status", func(ctx context.Context, b bucket) (err error) {
			r.v, err = readFresh(ctx, t, policy, policyGiven, b, f)
			return err
		})
		found <- r
	}()
	return found
}
