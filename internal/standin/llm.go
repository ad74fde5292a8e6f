package standin

import (
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Latency gives how long one upstream call takes once it has a slot. It is
// called concurrently.
type Latency func() time.Duration

// Fixed is a latency of exactly d.
func Fixed(d time.Duration) Latency { return func() time.Duration { return d } }

// Uniform is a latency spread evenly from lo to hi.
func Uniform(lo, hi time.Duration) Latency {
	return func() time.Duration { return lo + time.Duration(rand.Int64N(int64(hi-lo)+1)) }
}

// LogNormal is a latency with the given median whose logarithm has the
// standard deviation sigma: the long right tail of LLM completions (sigma
// 0.5 puts p99 at about 3.2 times the median).
func LogNormal(median time.Duration, sigma float64) Latency {
	return func() time.Duration {
		return time.Duration(float64(median) * math.Exp(sigma*rand.NormFloat64()))
	}
}

// LLM is an LLM API on loopback that behaves, in what a broker can see, as
// OpenAI's and Azure OpenAI's deployments do: calls take time, a deployment
// serves only so many at once, and a request quota per window is answered
// honestly with x-ratelimit-limit-requests, x-ratelimit-remaining-requests
// and x-ratelimit-reset-requests (a Go-like duration such as 1s or 250ms
// until the window resets) on every answer, and, once spent, with 429 and
// Retry-After in whole seconds rounded up.
//
// Set the fields before the first call and leave them; serve it with
// Upstreams.Add or Upstreams.Serve. Its methods are safe for concurrent use.
type LLM struct {
	// Model names the deployment in the answer's body.
	Model string
	// Latency is each call's time once it has a slot; nil: none.
	Latency Latency
	// Concurrency is how many calls it serves at once (0: no limit). A
	// call beyond it waits for a slot, as in a deployment's queue, and the
	// wait is part of its upstream time; it is never refused for it.
	Concurrency int
	// Quota is the requests it accepts per Window (0: no limit). A request
	// takes its share when it arrives; one beyond the quota is answered
	// 429 at once, without waiting for a slot, as the real APIs answer.
	Quota int
	// Window is the quota's window: a minute for the real APIs (the
	// default); benches and tests compress time with a window of a second
	// or two.
	Window time.Duration
	// Epoch is when a window starts; windows follow each other from it,
	// both ways (default: when the first call arrives). Two deployments
	// are rarely in step: give each its own.
	Epoch time.Time
	// Lazy starts a window with the first call after the last window
	// ended, rather than back to back from Epoch (which it ignores): the
	// quota a deployment that idles between windows loses is lost to its
	// client, as with an upstream whose window opens on the first call.
	Lazy bool

	once       sync.Once
	slots      chan struct{} // nil: no limit
	inProgress atomic.Int64
	calls      atomic.Int64 // answered 200
	limited    atomic.Int64 // answered 429

	mu      sync.Mutex
	epoch   time.Time
	window  int64 // the index of the window used counts in
	used    int
	windows map[int64]*WindowCount
}

// WindowCount is what an LLM answered in one quota window.
type WindowCount struct {
	Start   time.Time
	Served  int // requests that took a share of the quota
	Limited int // requests answered 429
}

func (l *LLM) init() {
	l.once.Do(func() {
		if l.Concurrency > 0 {
			l.slots = make(chan struct{}, l.Concurrency)
		}
		if l.Window <= 0 {
			l.Window = time.Minute
		}
		l.windows = map[int64]*WindowCount{}
	})
}

// InProgress is how many calls it holds now, waiting for a slot or being
// served: the truth a least-busy broker estimates.
func (l *LLM) InProgress() int64 { return l.inProgress.Load() }

// Served is how many calls it answered 200.
func (l *LLM) Served() int64 { return l.calls.Load() }

// Limited is how many calls it answered 429.
func (l *LLM) Limited() int64 { return l.limited.Load() }

// Windows is what it answered in each quota window that saw a request,
// oldest first; none without a quota.
func (l *LLM) Windows() []WindowCount {
	l.init()
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]WindowCount, 0, len(l.windows))
	for _, w := range l.windows {
		out = append(out, *w)
	}
	slices.SortFunc(out, func(a, b WindowCount) int { return a.Start.Compare(b.Start) })
	return out
}

// admit takes a share of the quota at now: ok is false when none is left,
// and reset is the time until the window resets. l.mu must be held.
func (l *LLM) admit(now time.Time) (ok bool, reset time.Duration) {
	if l.epoch.IsZero() {
		l.epoch = l.Epoch
		if l.epoch.IsZero() || l.Lazy {
			l.epoch = now
		}
		l.window = math.MinInt64
	}
	if l.Lazy && !now.Before(l.epoch.Add(l.Window)) {
		l.epoch = now // the last window has ended: this call opens the next
	}
	idx, start := l.windowAt(now)
	if idx != l.window {
		l.window, l.used = idx, 0
	}
	w := l.windows[idx]
	if w == nil {
		w = &WindowCount{Start: start}
		l.windows[idx] = w
	}
	if l.Quota > 0 && l.used >= l.Quota {
		w.Limited++
		return false, start.Add(l.Window).Sub(now)
	}
	l.used++
	w.Served++
	return true, start.Add(l.Window).Sub(now)
}

// windowAt is the index and start of the window holding now. l.mu must be
// held.
func (l *LLM) windowAt(now time.Time) (int64, time.Time) {
	d := now.Sub(l.epoch)
	if l.Lazy {
		// One window at a time, from the call that opened it; the index
		// is its start, which differs from every earlier one's.
		if d >= l.Window {
			return l.epoch.Add(d).UnixNano(), l.epoch.Add(d) // none open: the next starts now
		}
		return l.epoch.UnixNano(), l.epoch
	}
	idx := int64(d / l.Window)
	if d < 0 && d%l.Window != 0 {
		idx-- // floor, before the epoch too
	}
	return idx, l.epoch.Add(time.Duration(idx) * l.Window)
}

// left is the quota left now and the time until it resets, as an answer
// sent now says it.
func (l *LLM) left(now time.Time) (remaining int, reset time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	idx, start := l.windowAt(now)
	used := l.used
	if idx != l.window {
		used = 0 // nothing arrived yet in this window
	}
	return max(l.Quota-used, 0), start.Add(l.Window).Sub(now)
}

// resetString is a Go-like duration, as OpenAI writes x-ratelimit-reset-*:
// "1s", "250ms", "1.5s", never below a millisecond.
func resetString(d time.Duration) string {
	return max(d.Round(time.Millisecond), time.Millisecond).String()
}

// retryAfter is Retry-After in whole seconds, rounded up: a client that
// waits that long finds the quota reset.
func retryAfter(d time.Duration) string {
	return strconv.FormatInt(max(int64((d+time.Second-1)/time.Second), 1), 10)
}

func (l *LLM) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	l.init()
	l.inProgress.Add(1)
	defer l.inProgress.Add(-1)
	h := w.Header()
	if l.Quota > 0 {
		l.mu.Lock()
		ok, reset := l.admit(time.Now())
		l.mu.Unlock()
		if !ok {
			l.limited.Add(1)
			h.Set("X-Ratelimit-Limit-Requests", strconv.Itoa(l.Quota))
			h.Set("X-Ratelimit-Remaining-Requests", "0")
			h.Set("X-Ratelimit-Reset-Requests", resetString(reset))
			h.Set("Retry-After", retryAfter(reset))
			h.Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusTooManyRequests)
			fmt.Fprintf(w, `{"error":{"code":"429","message":"Requests to the %s deployment have exceeded the rate limit of %d per %v. Please retry after %s seconds."}}`,
				l.Model, l.Quota, l.Window, retryAfter(reset))
			return
		}
	}
	if l.slots != nil {
		select {
		case l.slots <- struct{}{}:
			defer func() { <-l.slots }()
		case <-r.Context().Done():
			return
		}
	}
	if l.Latency != nil {
		t := time.NewTimer(l.Latency())
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
	}
	if l.Quota > 0 {
		// What is left when the answer leaves, which is what the client
		// reads: other calls may have taken shares meanwhile.
		remaining, reset := l.left(time.Now())
		h.Set("X-Ratelimit-Limit-Requests", strconv.Itoa(l.Quota))
		h.Set("X-Ratelimit-Remaining-Requests", strconv.Itoa(remaining))
		h.Set("X-Ratelimit-Reset-Requests", resetString(reset))
	}
	l.calls.Add(1)
	h.Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"object":"chat.completion","model":%q,"choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}]}`, l.Model)
}
