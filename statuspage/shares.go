package statuspage

import (
	"math"
	"sync"
	"time"

	"github.com/gecholog/broker/broker"
)

const (
	// window is how far back "recent choices" reach.
	window = time.Minute
	// minWindow is the shortest span worth calling recent: over less, a
	// few calls would swing the shares, so the page counts since the
	// replica started until it has watched this long.
	minWindow = 10 * time.Second
)

// shares remembers this replica's choice counts, at most once a second
// and only while a page asks, so that the page shows the share of recent
// choices rather than of every choice since the replica started. It
// starts no goroutine: the pages' own requests take the samples.
type shares struct {
	mu      sync.Mutex
	samples []sample // oldest first; the first is the base of the window
}

type sample struct {
	at     time.Time
	chosen map[choice]uint64
}

type choice struct{ ingress, router string }

// recent records the counts in views, the core's view of every router at
// now, and returns the span counted over in seconds (0: since the replica
// started) and each view's choices within it.
func (s *shares) recent(now time.Time, views []broker.RouterView) (seconds float64, chosen []uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// Keep one sample at or before the window's start, as its base.
	for len(s.samples) > 1 && !s.samples[1].at.After(now.Add(-window)) {
		s.samples = s.samples[1:]
	}
	// A page closed for a while left only old samples: start again.
	if len(s.samples) > 0 && s.samples[0].at.Before(now.Add(-window-minWindow)) {
		s.samples = nil
	}
	chosen = make([]uint64, len(views))
	var base *sample
	if len(s.samples) > 0 && now.Sub(s.samples[0].at) >= minWindow {
		base = &s.samples[0]
		// Whole seconds: the page's event stream sends a snapshot when it
		// changes, and a window growing by the nanosecond always would.
		seconds = math.Floor(now.Sub(base.at).Seconds())
	}
	for i, v := range views {
		chosen[i] = v.Chosen
		if base == nil {
			continue
		}
		was, ok := base.chosen[choice{v.Ingress, v.Router}]
		if !ok || was > v.Chosen {
			// A count the base lacks, or one that went back (a new core):
			// the window does not apply, so count since the start.
			return s.since(now, views)
		}
		chosen[i] = v.Chosen - was
	}
	s.take(now, views)
	return seconds, chosen
}

// since counts every choice since the replica started and starts the
// samples again.
func (s *shares) since(now time.Time, views []broker.RouterView) (float64, []uint64) {
	s.samples = nil
	chosen := make([]uint64, len(views))
	for i, v := range views {
		chosen[i] = v.Chosen
	}
	s.take(now, views)
	return 0, chosen
}

// take adds a sample of views at now, unless one was taken within the
// last second; s.mu must be held.
func (s *shares) take(now time.Time, views []broker.RouterView) {
	if n := len(s.samples); n > 0 && now.Sub(s.samples[n-1].at) < time.Second {
		return
	}
	m := make(map[choice]uint64, len(views))
	for _, v := range views {
		m[choice{v.Ingress, v.Router}] = v.Chosen
	}
	s.samples = append(s.samples, sample{at: now, chosen: m})
}
