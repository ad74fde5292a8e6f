package ops_test

import (
	"context"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gecholog/broker/ops"
)

// TestStatusWatchThroughANodeCutOffShowsItsCopyMarkedStaleUntilItHeals
// runs `broker status --watch` through n1 of three, once from before n1
// is cut off from the others and once from after. While the bucket does
// not answer through n1, both draw n1's copy, marked stale as plain
// status marks it (the copy misses the majority's disable); once n1's
// routes heal, the first draws the bucket again, unmarked, without a
// restart. Every frame comes within WatchEvery and a read's timeout of
// the one before and says when it was read; once stale, within WatchEvery
// and a read of the copy; a cancel, mid-read too, ends the watch at once
// and without an error.
func TestStatusWatchThroughANodeCutOffShowsItsCopyMarkedStaleUntilItHeals(t *testing.T) {
	p := startPartitioned(t)
	through := p.c.Servers[0].ClientURL()
	bucket := func(f string) bool { return strings.HasPrefix(lines(f)[1], "bucket gl_broker on "+through+", ") }
	stale := func(f string) bool {
		return strings.HasPrefix(lines(f)[1], "STALE: bucket gl_broker does not answer through "+through+" at ")
	}

	before := startWatch(t, p.cutoff)
	before.await(t, 0, 30*time.Second, "a frame of the bucket", func(f string) bool {
		return bucket(f) && strings.Contains(tableRow(f, "/azure/dud/"), "disabled")
	})
	p.cut(t)
	after := startWatch(t, p.cutoff)
	for _, w := range []*watcher{before, after} {
		f := w.await(t, 0, 40*time.Second, "a frame marked stale", stale)
		t.Logf("a stale frame says: %s", lines(f)[1])
		says(t, f, "showing n1's own copy of the bucket, up to revision") // whose copy, as plain status says
		if row := tableRow(f, "/azure/dud/"); !strings.Contains(row, "disabled") {
			t.Errorf("the copy's /azure/dud/ row is %q, want it disabled", row)
		}
		if row := tableRow(f, "/azure/gpt4/"); !strings.Contains(row, "enabled") {
			t.Errorf("the copy's /azure/gpt4/ row is %q, want it enabled: the copy misses the majority's disable", row)
		}
	}
	// Once stale, the frames draw n1's copy at once, every WatchEvery,
	// rather than each waiting out a read of the bucket (6 s) first.
	before.await(t, before.count()+2, 30*time.Second, "three more frames, stale", stale)
	var gaps []time.Duration
	frames := before.drawnSoFar()
	for i := 1; i < len(frames); i++ {
		if stale(frames[i-1].text) && stale(frames[i].text) {
			gaps = append(gaps, frames[i].at.Sub(frames[i-1].at))
		}
	}
	if len(gaps) < 2 {
		t.Fatalf("%d stale frames one after the other, want 3 or more", len(gaps)+1)
	}
	for _, gap := range gaps {
		if gap > ops.WatchEvery+2*time.Second+2*time.Second { // a copy's read at most, and 2 s for a busy machine
			t.Errorf("a stale frame came %v after the stale one before, want within WatchEvery and a copy's read: %v", gap, gaps)
		}
	}
	// A cancel, mid-read too, ends the watch at once.
	after.stop(t)

	from, healed := before.count(), time.Now()
	p.c.Heal(0)
	f := before.await(t, from, 60*time.Second, "a frame of the bucket after the heal", func(f string) bool {
		return bucket(f) && !strings.Contains(f, "STALE")
	})
	t.Logf("the bucket drawn again %v after the heal", time.Since(healed).Round(time.Millisecond))
	if row := tableRow(f, "/azure/gpt4/"); !strings.Contains(row, "disabled") {
		t.Errorf("after the heal, the /azure/gpt4/ row is %q, want the majority's disable", row)
	}
	before.stop(t)

	for _, w := range []*watcher{before, after} {
		w.checkFrames(t)
	}
}

// watcher runs `broker status --watch` and keeps each frame it draws with
// the time it was drawn.
type watcher struct {
	cancel context.CancelFunc
	start  time.Time
	ended  chan struct{} // closed once Status returned err
	err    error
	drawn  chan struct{} // a word after each frame; never blocks

	mu     sync.Mutex
	frames []frame
}

type frame struct {
	at   time.Time
	text string
}

// startWatch starts status --watch on tgt; it is stopped when the test
// ends, if not before.
func startWatch(t *testing.T, tgt ops.Target) *watcher {
	ctx, cancel := context.WithCancel(context.Background())
	w := &watcher{cancel: cancel, start: time.Now(), ended: make(chan struct{}), drawn: make(chan struct{}, 1)}
	go func() {
		defer close(w.ended)
		w.err = ops.Status(ctx, tgt, ops.StatusOptions{Watch: true}, w)
	}()
	t.Cleanup(func() { cancel(); <-w.ended })
	return w
}

// Write takes one frame: watch draws each with one write.
func (w *watcher) Write(b []byte) (int, error) {
	w.mu.Lock()
	w.frames = append(w.frames, frame{at: time.Now(), text: string(b)})
	w.mu.Unlock()
	select {
	case w.drawn <- struct{}{}:
	default:
	}
	return len(b), nil
}

func (w *watcher) drawnSoFar() []frame {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.frames)
}

// count is how many frames were drawn so far.
func (w *watcher) count() int { return len(w.drawnSoFar()) }

// await returns the first frame from the from-th on (0: the first) that is
// ok, waiting up to d for it; it fails the test if the watch ends first.
func (w *watcher) await(t *testing.T, from int, d time.Duration, what string, ok func(string) bool) string {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	seen := from
	for {
		frames := w.drawnSoFar()
		for _, f := range frames[min(seen, len(frames)):] {
			if ok(f.text) {
				return f.text
			}
		}
		seen = max(seen, len(frames))
		last := "(none)"
		if len(frames) > 0 {
			last = frames[len(frames)-1].text
		}
		select {
		case <-w.drawn:
		case <-w.ended:
			if w.count() == len(frames) {
				t.Fatalf("status --watch returned %v before %s; its last frame:\n%s", w.err, what, last)
			}
		case <-deadline.C:
			t.Fatalf("not within %v: %s; the last of %d frames:\n%s", d, what, len(frames), last)
		}
	}
}

// stop cancels the watch, which must end at once, without an error.
func (w *watcher) stop(t *testing.T) {
	t.Helper()
	w.cancel()
	select {
	case <-w.ended:
		if w.err != nil {
			t.Errorf("status --watch ended by its context returned %v, want nil", w.err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("status --watch still running 2s after its cancel")
	}
}

// readAt is the time a frame's heading says it was read.
var readAt = regexp.MustCompile(` at (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)`)

// checkFrames checks that each frame opens as watch(1) does, came within
// WatchEvery and a read's timeout (10 s) of the one before (or of the
// start), and says it was read after the one before was drawn and before
// it was drawn itself.
func (w *watcher) checkFrames(t *testing.T) {
	t.Helper()
	prev := w.start
	var gaps []string
	for i, f := range w.drawnSoFar() {
		ls := lines(f.text)
		if ls[0] != "\x1b[H\x1b[2JEvery 1s: broker status (Ctrl-C to stop)" {
			t.Errorf("frame %d opens with %q", i, ls[0])
		}
		gap := f.at.Sub(prev)
		gaps = append(gaps, gap.Round(10*time.Millisecond).String())
		if gap > ops.WatchEvery+10*time.Second+2*time.Second { // the 2 s for a busy machine
			t.Errorf("frame %d came %v after the one before", i, gap)
		}
		m := readAt.FindStringSubmatch(ls[1])
		if m == nil {
			t.Errorf("frame %d says no time it was read: %q", i, ls[1])
			continue
		}
		read, _ := time.Parse(time.RFC3339, m[1]) // to the second
		if read.Before(prev.Truncate(time.Second)) || read.After(f.at) {
			t.Errorf("frame %d says it was read at %s; it was read between %s and %s", i, m[1],
				prev.UTC().Format(time.RFC3339Nano), f.at.UTC().Format(time.RFC3339Nano))
		}
		prev = f.at
	}
	t.Logf("%d frames, each after the one before: %s", len(gaps), strings.Join(gaps, " "))
}
