package broker_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/testutil/natstest"
)

// conflictingStore is a store whose every compare-and-set loses, as when
// a replica reads a key from a follower that lags the stream: the write
// never lands, and the store counts each attempt.
type conflictingStore struct {
	*fakeStore
	mu       sync.Mutex
	attempts int
}

func (c *conflictingStore) Update(context.Context, broker.Record, uint64) (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.attempts++
	return 0, broker.ErrConflict
}

func (c *conflictingStore) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.attempts
}

func TestAWriteThatKeepsConflictingBacksOffInsteadOfSpinning(t *testing.T) {
	store := &conflictingStore{fakeStore: newFakeStore()}
	b, _ := newBroker(t, broker.Config{Store: store})
	report(b, "/azure/dud/", 502)
	natstest.Eventually(t, 5*time.Second, func() bool { return store.count() >= 3 }, "the write retried")
	start, first := time.Now(), store.count()
	// However fast the machine, the pauses double from 5 ms up to a
	// second: over a second, at most about nine more attempts. Without
	// them, a conflict is decided again at once, thousands of times.
	natstest.Eventually(t, 10*time.Second, func() bool { return time.Since(start) >= time.Second }, "a second")
	if n := store.count() - first; n > 12 {
		t.Fatalf("%d attempts in a second of conflicts, want a backoff (at most 12)", n)
	}
	is.New(t).True(b.Stats().KVFailures[0] >= 3) // counted as conflicts
}

// causedErr is a store's error that names its cause, as kv's do.
type causedErr struct{ cause string }

func (e causedErr) Error() string { return "write: " + e.cause }
func (e causedErr) Cause() string { return e.cause }

// causingStore fails every write with err.
type causingStore struct {
	*fakeStore
	err error
}

func (c causingStore) Update(context.Context, broker.Record, uint64) (uint64, error) { return 0, c.err }

func TestFailedWritesAreCountedByTheCauseTheStoreNames(t *testing.T) {
	for i, cause := range broker.WriteCauses {
		t.Run(cause, func(t *testing.T) {
			var err error = causedErr{cause}
			switch cause {
			case "conflict":
				err = broker.ErrConflict
			case "timeout":
				err = fmt.Errorf("write: %w", context.DeadlineExceeded) // a deadline the store did not name
			case "other":
				err = errors.New("nats: something new")
			}
			b, _ := newBroker(t, broker.Config{Store: causingStore{newFakeStore(), err}})
			report(b, "/azure/dud/", 502)
			natstest.Eventually(t, 5*time.Second, func() bool { return b.Stats().KVFailures[i] >= 2 }, "failures counted as %s", cause)
			for j, n := range b.Stats().KVFailures {
				if j != i && n != 0 {
					t.Errorf("%d failures counted as %s, want all as %s", n, broker.WriteCauses[j], cause)
				}
			}
		})
	}
}

func TestAWriteThatNeverLandsSaysWithItsCauseWhenItGivesUp(t *testing.T) {
	store := causingStore{newFakeStore(), causedErr{"no_quorum"}}
	b, l := newBroker(t, broker.Config{Store: store, Policy: broker.Policy{DisabledTime: 300 * time.Millisecond}})
	report(b, "/azure/dud/", 502)
	natstest.Eventually(t, 10*time.Second, func() bool {
		return l.count("gave up writing router health to the bucket: what it said has ended") == 1
	}, "a line saying the write gave up")
	is := is.New(t)
	is.Equal(l.count("could not write router health to the bucket; other replicas do not know yet; retrying"), 1) // one line when it starts
	l.mu.Lock()
	defer l.mu.Unlock()
	is.True(strings.Contains(l.buf.String(), `"cause":"no_quorum"`)) // the cause, named
}

// silentStore is a store that does not answer, as one behind a partition:
// each read waits for its context, and says how it ended, until healed.
type silentStore struct {
	*fakeStore
	mu      sync.Mutex
	healed  bool
	entered int     // reads that began waiting
	ended   []error // how each read that waited ended
}

func (s *silentStore) Latest(ctx context.Context, router string) (broker.Entry, bool, error) {
	s.mu.Lock()
	healed := s.healed
	s.mu.Unlock()
	if healed {
		return s.fakeStore.Latest(ctx, router)
	}
	s.mu.Lock()
	s.entered++
	s.mu.Unlock()
	<-ctx.Done()
	s.mu.Lock()
	s.ended = append(s.ended, ctx.Err())
	s.mu.Unlock()
	return broker.Entry{}, false, ctx.Err()
}

func (s *silentStore) heal() { s.mu.Lock(); s.healed = true; s.mu.Unlock() }

func (s *silentStore) waits() (waited int, cut int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	waited = len(s.ended)
	for _, err := range s.ended {
		if errors.Is(err, context.Canceled) {
			cut++
		}
	}
	return waited, cut
}

func (s *silentStore) waiting() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.entered - len(s.ended)
}

func TestRetryWritesCutsShortTheAttemptWaitingOnAStoreThatIsBack(t *testing.T) {
	store := &silentStore{fakeStore: newFakeStore()}
	b, _ := newBroker(t, broker.Config{Store: store})
	report(b, "/azure/dud/", 502)
	// The first attempt waits out its 2 s; the second is waiting when
	// the store heals. RetryWrites ends that one at once, cancelled
	// rather than at its deadline, and the next lands.
	natstest.Eventually(t, 10*time.Second, func() bool { n, _ := store.waits(); return n >= 1 && store.waiting() == 1 },
		"a second attempt waiting after the first timed out")
	store.heal()
	b.RetryWrites()
	natstest.Eventually(t, 10*time.Second, func() bool { _, ok := store.entry("/azure/dud/"); return ok }, "the disable written")
	if n, cut := store.waits(); n != 2 || cut != 1 {
		t.Errorf("%d attempts waited, %d cut short; want the second cut short by RetryWrites", n, cut)
	}
}

func TestADisableThatEndedWhileTheStoreWasAwayIsNotWrittenWhenItIsBack(t *testing.T) {
	store := &silentStore{fakeStore: newFakeStore()}
	b, l := newBroker(t, broker.Config{Store: store, Policy: broker.Policy{DisabledTime: 300 * time.Millisecond}})
	report(b, "/azure/dud/", 502)
	natstest.Eventually(t, 10*time.Second, func() bool {
		return l.count("gave up writing router health to the bucket: what it said has ended") == 1
	}, "the write giving up once the disable ended")
	store.heal()
	b.RetryWrites()
	b.Close(context.Background()) // waits for any write under way
	if _, ok := store.entry("/azure/dud/"); ok || store.writeCount() != 0 {
		t.Errorf("a disable that ended while the store was away was written when it came back")
	}
}
