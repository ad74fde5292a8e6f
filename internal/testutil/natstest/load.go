package natstest

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// Call is one request a Load made.
type Call struct {
	Start, End time.Time
	Err        error // the request's error, or what check said of the reply
}

// Load is callers making requests back to back, as gecholog's request
// processor does for each client call, each waiting at most its timeout
// for the answer. It goes on until the test stops it (Finish), however
// fast or slow the machine is: a test waits for what it needs with
// WaitAnswered, never for the load to run out.
type Load struct {
	mu    sync.Mutex
	calls []Call
	halt  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup
}

const (
	// LoadPace is the shortest time between the starts of one caller's
	// calls. A machine that answers faster is not made to answer more,
	// so that the calls a Load keeps grow with time, not with the
	// machine's speed; a slower one calls back to back.
	LoadPace = time.Millisecond
	// MaxLoadTime and maxLoadCalls are safety bounds for a test that
	// forgets to stop its load (its cleanup stops it anyway); at LoadPace,
	// up to eight callers reach the time first. Reaching either fails the
	// test saying so: the load never ends quietly while the test still
	// waits for answers.
	MaxLoadTime  = 2 * time.Minute
	maxLoadCalls = 1_000_000
)

// StartLoad starts callers calling subject with body on nc. check, if not
// nil, says what is wrong with a reply (nil: nothing). The load is stopped
// and waited for when the test ends, if Finish has not been called.
func StartLoad(t testing.TB, nc *nats.Conn, callers int, subject string, body []byte, timeout time.Duration, check func(*nats.Msg) error) *Load {
	l := &Load{halt: make(chan struct{})}
	end := time.Now().Add(MaxLoadTime)
	for range callers {
		l.wg.Go(func() {
			pace := time.NewTicker(LoadPace)
			defer pace.Stop()
			for {
				select {
				case <-l.halt:
					return
				case <-pace.C: // a slow caller finds the tick waiting
				}
				if time.Now().After(end) {
					t.Errorf("natstest: load still running after %v: stop it with Finish", MaxLoadTime)
					return
				}
				c := Call{Start: time.Now()}
				m, err := nc.Request(subject, body, timeout)
				c.End = time.Now()
				if err == nil && check != nil {
					err = check(m)
				}
				c.Err = err
				l.mu.Lock()
				l.calls = append(l.calls, c)
				n := len(l.calls)
				l.mu.Unlock()
				if n >= maxLoadCalls {
					t.Errorf("natstest: load made %d calls and still runs: stop it with Finish", n)
					return
				}
			}
		})
	}
	t.Cleanup(func() { l.Finish() })
	return l
}

// WaitAnswered waits at most d until n calls sent at or after from have
// been answered without error. When they have not, it fails the test with
// how many calls were made and how each kind of failure counted.
func (l *Load) WaitAnswered(t testing.TB, from time.Time, n int, d time.Duration) {
	t.Helper()
	seen, ok := 0, 0 // the calls looked at so far, and how many of them count
	defer func() {
		if t.Failed() {
			l.mu.Lock()
			defer l.mu.Unlock()
			failures := map[string]int{}
			for _, c := range l.calls {
				if c.Err != nil {
					failures[c.Err.Error()]++
				}
			}
			t.Logf("%d calls, %d answered since %v, failures: %v", len(l.calls), ok, from.Format(time.RFC3339Nano), failures)
		}
	}()
	Eventually(t, d, func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		for _, c := range l.calls[seen:] {
			if c.Err == nil && !c.Start.Before(from) {
				ok++
			}
		}
		seen = len(l.calls)
		return ok >= n
	}, "%d calls answered", n)
}

// Finish stops the callers, waits for them and returns every call made.
func (l *Load) Finish() []Call {
	l.once.Do(func() { close(l.halt) })
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.calls)
}
