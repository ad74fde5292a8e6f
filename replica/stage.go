package replica

import "sync/atomic"

// stage is how far a replica has come, in the order Run passes through
// the stages. Its String is what /readyz answers while the replica is not
// ready.
type stage int32

const (
	notConnected stage = iota // waiting for the NATS server
	openingStore              // opening the router health bucket
	loadingView               // reading every router's health from it
	subscribing               // joining the queue group
	ready                     // answering calls
	stopping                  // draining the calls it holds, then stopping
)

func (s stage) String() string {
	switch s {
	case notConnected:
		return "not connected to NATS"
	case openingStore:
		return "opening the router health bucket"
	case loadingView:
		return "loading router health"
	case subscribing:
		return "subscribing"
	case ready:
		return "ready"
	case stopping:
		return "stopping"
	}
	return "unknown stage"
}

// progress is a replica's stage, read by its listener while Run moves it
// on. It only moves forward: a replica that attaches to the bucket again
// from local mode, loading the view while it serves, stays ready.
type progress struct{ v atomic.Int32 }

func (p *progress) load() stage { return stage(p.v.Load()) }

// advance moves to s unless the replica is there or past it already, and
// returns the stage it was at.
func (p *progress) advance(s stage) (was stage) {
	for {
		old := p.v.Load()
		if stage(old) >= s || p.v.CompareAndSwap(old, int32(s)) {
			return stage(old)
		}
	}
}
