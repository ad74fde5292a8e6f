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

// clearScreen moves the cursor home and clears the terminal, as watch(1)
// does before each redraw.
const clearScreen = "\x1b[H\x1b[2J"

// watch redraws what status shows every WatchEvery until ctx ends, each
// frame read as plain status reads it (readStatus): while the bucket does
// not answer through n, n's own copy, marked stale; once it answers
// again, the bucket. A read takes at most opTimeout, and the frame before
// stays on the screen meanwhile, with the time it was read. A read that
// fails otherwise (the server gone a while, the bucket deleted) is shown
// in the table's place, and the next redraw tries again; only the first
// fails the command, as plain status would.
func watch(ctx context.Context, t Target, policy broker.Policy, o StatusOptions, n node, stdout io.Writer) error {
	tick := time.NewTicker(WatchEvery)
	defer tick.Stop()
	f := hearFleet(n.nc, t.Bucket)
	defer f.stop()
	for first := true; ; first = false {
		v, err := readStatus(ctx, t, policy, o.PolicyGiven, n, f)
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
