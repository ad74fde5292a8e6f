package broker

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/matryer/is"
)

// pinnedSum is the sessions the routers count as pinned, and live the
// sessions the memory holds: always the same.
func pinnedSum(routes []*route) (n int64) {
	for _, rt := range routes {
		n += rt.stats.pinned.Load()
	}
	return n
}

func (m *sessionMemory) live() (n int) {
	for i := range m.shards {
		m.shards[i].mu.Lock()
		n += m.shards[i].live
		m.shards[i].mu.Unlock()
	}
	return n
}

// TestTheMemoryReadsWithoutALockWhileItIsWrittenSweptAndRebuilt hears,
// sweeps and evicts sessions on one goroutine (lifetimes of 100 to 300,000
// steps of its clock, so that sessions are forgotten, evicted and tables
// rebuilt all along)
// while others look them up: a lookup finds nil or a router the session
// was heard on, never another session's, and the routers' counts of
// sessions pinned always add up to the sessions remembered.
func TestTheMemoryReadsWithoutALockWhileItIsWrittenSweptAndRebuilt(t *testing.T) {
	is := is.New(t)
	var m sessionMemory
	m.init()
	routes := make([]*route, 4)
	for i := range routes {
		routes[i] = &route{path: "/r/" + string(rune('a'+i)) + "/"}
	}
	// Session k is only ever heard on routes[k%3] or routes[3], so a
	// lookup can tell its own router from another session's.
	own := func(k uint64, rt *route) bool { return rt == routes[k%3] || rt == routes[3] }
	// Sessions of 4 shards, more than they hold: evictions too.
	const keys = 8 * memPerShard
	key := func(rng *rand.Rand) uint64 {
		n := rng.Uint64N(keys)
		return n%4<<58 | n*0x9e3779b97f4a7c15>>8
	}
	var step atomic.Int64
	var done atomic.Bool
	var wg sync.WaitGroup
	bad := make(chan string, 4)
	for range 3 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(rand.Uint64(), 0))
			for !done.Load() {
				k := key(rng)
				if rt := m.home(k); rt != nil && !own(k, rt) {
					select {
					case bad <- rt.path:
					default:
					}
				}
			}
		})
	}
	rng := rand.New(rand.NewPCG(5, 6))
	for i := range 100_000 {
		now := step.Add(1)
		m.clock.Store(now)
		k := key(rng)
		rt := routes[k%3]
		if rng.IntN(4) == 0 {
			rt = routes[3] // a move
		}
		m.hear(k, rt, rng.IntN(2) == 0, 0, now, time.Duration(100+rng.IntN(300_000))) // in steps of the clock
		if i%64 == 0 {
			m.sweep(now)
		}
	}
	done.Store(true)
	wg.Wait()
	close(bad)
	for r := range bad {
		t.Fatalf("a lookup found %s, a router its session was never heard on", r)
	}
	t.Logf("%d sessions remembered, %d evicted", m.live(), m.evicted.Load())
	is.True(m.evicted.Load() > 0)                // the bound was reached
	is.Equal(pinnedSum(routes), int64(m.live())) // every session remembered is pinned to one router
	is.True(m.live() <= MaxRemembered)           // never more than the bound
	for i := range m.shards {
		sweepAll := step.Load() + 1<<40 // every lifetime over
		m.sweepShard(&m.shards[i], sweepAll)
	}
	is.Equal(m.live(), 0)                 // the sweep forgets every session over
	is.Equal(pinnedSum(routes), int64(0)) // and the counts follow
}

// TestTheMemoryKeepsEverySessionThroughItsRebuilds hears a shard's bound
// of sessions, one at a time, through every table size: each is found
// after every rebuild, and an evicted one only once the shard is full.
func TestTheMemoryKeepsEverySessionThroughItsRebuilds(t *testing.T) {
	is := is.New(t)
	var m sessionMemory
	m.init()
	rt := &route{path: "/r/"}
	var keys []uint64
	for k := uint64(2); len(keys) < memPerShard; k++ {
		keys = append(keys, k*0x9e3779b97f4a7c15>>6) // shard 0: the top 6 bits 0
	}
	for i, k := range keys {
		m.hear(k, rt, false, 0, 1, time.Hour)
		if i%97 == 0 {
			for _, old := range keys[:i+1] {
				is.Equal(m.home(old), rt) // every session heard so far, whatever the table
			}
		}
	}
	is.Equal(m.shards[0].live, memPerShard)
	is.Equal(len(m.shards[0].table.Load().slots), memMaxSlots)
	is.Equal(m.evicted.Load(), uint64(0))
	m.hear(1<<50, rt, false, 0, 1, time.Hour) // one more in shard 0: full
	is.Equal(m.evicted.Load(), uint64(1))
	is.Equal(m.shards[0].live, memPerShard)
	is.Equal(rt.stats.pinned.Load(), int64(memPerShard))
}
