package replica_test

import (
	"bytes"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gecholog/broker/internal/natstest"
)

// servingLoad is callers making request contexts back to back, as
// gecholog's request processor does for each client call, each waiting at
// most its timeout for an answer with one of the pool's routers. Each
// caller stops after maxServingCalls calls or maxServingTime, whichever
// comes first, should a test not stop it.
type servingLoad struct {
	mu    sync.Mutex
	calls []servingCall
	halt  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup
}

// servingCall is one request context of a servingLoad; err is set when it
// was not answered with a router in time.
type servingCall struct {
	start, end time.Time
	err        error
}

const (
	maxServingCalls = 100_000
	maxServingTime  = 2 * time.Minute
)

// startServingLoad starts callers on nc; the test's cleanup stops them.
func startServingLoad(t *testing.T, nc *nats.Conn, callers int, timeout time.Duration) *servingLoad {
	t.Helper()
	l := &servingLoad{halt: make(chan struct{})}
	end := time.Now().Add(maxServingTime)
	for range callers {
		l.wg.Go(func() {
			for range maxServingCalls {
				select {
				case <-l.halt:
					return
				default:
				}
				if time.Now().After(end) {
					return
				}
				c := servingCall{start: time.Now()}
				m, err := nc.Request("coburn.gl.broker", []byte(`{"gl_path":"/azure/"}`), timeout)
				c.end = time.Now()
				if err == nil && !bytes.HasPrefix(m.Data, []byte(`{"gl_path":"/azure/`)) {
					err = fmt.Errorf("reply %q is not a router of the pool", m.Data)
				}
				c.err = err
				l.mu.Lock()
				l.calls = append(l.calls, c)
				l.mu.Unlock()
			}
		})
	}
	t.Cleanup(func() { l.finish() })
	return l
}

// waitAnswered waits until n calls that started at or after from were
// answered.
func (l *servingLoad) waitAnswered(t *testing.T, from time.Time, n int, d time.Duration) {
	t.Helper()
	natstest.Eventually(t, d, func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		ok := 0
		for _, c := range l.calls {
			if c.err == nil && !c.start.Before(from) {
				ok++
			}
		}
		return ok >= n
	}, "%d calls answered", n)
}

// finish stops the callers, waits for them, and returns every call made,
// in the order they started.
func (l *servingLoad) finish() []servingCall {
	l.once.Do(func() { close(l.halt) })
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	calls := slices.Clone(l.calls)
	slices.SortFunc(calls, func(a, b servingCall) int { return a.start.Compare(b.start) })
	return calls
}

// servedThroughout checks the calls that ended within from..to: it
// returns how many were answered, the errors of those that were not, and
// the longest time within from..to in which no call was answered.
func servedThroughout(calls []servingCall, from, to time.Time) (answered int, failed []error, gap time.Duration) {
	ends := []time.Time{from}
	for _, c := range calls {
		if c.end.Before(from) || c.end.After(to) {
			continue
		}
		if c.err != nil {
			failed = append(failed, c.err)
			continue
		}
		answered++
		ends = append(ends, c.end)
	}
	ends = append(ends, to)
	slices.SortFunc(ends, time.Time.Compare)
	for i := 1; i < len(ends); i++ {
		gap = max(gap, ends[i].Sub(ends[i-1]))
	}
	return answered, failed, gap
}
