package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/matryer/is"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/gecholog/broker/internal/natstest"
)

// killCallTimeout is how long a caller of the load below waits for an
// answer, as gecholog waits its processor timeout: a call handed to a
// replica that dies is lost, and costs its caller this long.
const killCallTimeout = time.Second

// Not parallel: the bound on lost calls holds whatever the machine's load,
// but a call that times out on a starved machine would be counted as lost.
func TestReplicaKilledMidLoadCostsAtMostTheCallsInFlightOnIt(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	replicas := startReplicas(t, s, 3)
	nc := natstest.Connect(t, s)

	// Callers make request contexts back to back through the queue group,
	// as gecholog does for each client call.
	const callers, maxCalls = 4, 20_000
	type call struct {
		start, end time.Time
		err        error
	}
	var (
		mu    sync.Mutex
		calls []call
		wg    sync.WaitGroup
	)
	stop := make(chan struct{})
	var once sync.Once
	halt := func() { once.Do(func() { close(stop) }); wg.Wait() }
	t.Cleanup(halt)
	body := fmt.Appendf(nil, `{"gl_path":%q}`, ingress)
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range maxCalls {
				select {
				case <-stop:
					return
				default:
				}
				c := call{start: time.Now()}
				m, err := nc.Request(brokerTopic, body, killCallTimeout)
				c.end = time.Now()
				if err == nil && !bytes.HasPrefix(m.Data, []byte(`{"gl_path":"/azure/`)) {
					err = fmt.Errorf("reply %q is not a router of the pool", m.Data)
				}
				c.err = err
				mu.Lock()
				calls = append(calls, c)
				mu.Unlock()
			}
		}()
	}
	answeredSince := func(from time.Time, n int) {
		t.Helper()
		natstest.Eventually(t, 15*time.Second, func() bool {
			mu.Lock()
			defer mu.Unlock()
			ok := 0
			for _, c := range calls {
				if c.err == nil && !c.start.Before(from) {
					ok++
				}
			}
			return ok >= n
		}, "%d calls answered", n)
	}
	answeredSince(time.Time{}, 300)

	victim := replicas[1]
	killed := time.Now()
	victim.signal(t, syscall.SIGKILL)
	is.Equal(victim.exitCode(t, 5*time.Second), -1) // ended by the signal, with no chance to drain
	// The kernel closes the dead process's socket; the server then stops
	// handing it calls.
	natstest.Eventually(t, 5*time.Second, func() bool { return !serverHasClient(t, s, "gecholog-broker "+victim.id) },
		"the server drops %s's connection", victim.id)
	gone := time.Now()
	answeredSince(gone, 300)
	halt()

	mu.Lock()
	defer mu.Unlock()
	var failed, timeouts, failedAfter, sentBefore int
	var answered []time.Time
	for _, c := range calls {
		if c.err == nil {
			answered = append(answered, c.end)
			continue
		}
		failed++
		if errors.Is(c.err, nats.ErrTimeout) {
			timeouts++
		} else {
			t.Errorf("call failed other than by a timeout: %v", c.err)
		}
		if c.start.Before(killed) {
			sentBefore++
		}
		if c.start.After(gone) {
			failedAfter++
		}
	}
	slices.SortFunc(answered, func(a, b time.Time) int { return a.Compare(b) })
	var pause time.Duration
	for i := 1; i < len(answered); i++ {
		pause = max(pause, answered[i].Sub(answered[i-1]))
	}
	t.Logf("SIGKILL of %s mid-load: the server dropped its connection %v later; %d calls by %d callers, %d lost (timed out after %v): "+
		"%d sent before the signal, %d after it, before the server knew; longest pause between answers %v",
		victim.id, gone.Sub(killed).Round(time.Microsecond), len(calls), callers, failed, killCallTimeout,
		sentBefore, failed-sentBefore, pause.Round(time.Millisecond))
	is.True(failed <= callers) // at most the calls in flight on the killed replica
	is.Equal(failed, timeouts) // lost, not refused: the others were there all along
	is.Equal(failedAfter, 0)   // once the server knows, every call is answered
	for _, r := range replicas {
		if r != victim {
			select {
			case <-r.exited:
				t.Errorf("%s exited: %v", r.id, r.state)
			default: // still serving
			}
		}
	}
}

// serverHasClient reports whether s has a client connection called name.
func serverHasClient(t *testing.T, s *server.Server, name string) bool {
	t.Helper()
	cz, err := s.Connz(&server.ConnzOptions{})
	if err != nil {
		t.Fatalf("connz: %v", err)
	}
	return slices.ContainsFunc(cz.Conns, func(c *server.ConnInfo) bool { return c.Name == name })
}
