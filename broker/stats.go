package broker

import (
	"errors"
	"strconv"
	"sync"
	"time"
)

// Outcome is what became of one processor call.
type Outcome int

// The outcomes of a call, by context.
const (
	Chosen     Outcome = iota // request context: answered with a router
	Panicked                  // request context: no router enabled, answered by the all-disabled rule
	Stranded                  // request context: no router to answer with, answered empty
	NotIngress                // request context: not an ingress, answered empty
	Succeeded                 // response context: not a failure
	Failed                    // response context: a failure
	numOutcomes
)

var outcomeNames = [numOutcomes]string{"chosen", "panic", "stranded", "not_ingress", "success", "failure"}

func (o Outcome) String() string {
	if o >= 0 && o < numOutcomes {
		return outcomeNames[o]
	}
	return "Outcome(" + strconv.Itoa(int(o)) + ")"
}

// Outcomes lists every outcome, for counting them all.
func Outcomes() []Outcome {
	out := make([]Outcome, numOutcomes)
	for i := range out {
		out[i] = Outcome(i)
	}
	return out
}

// Context is the processor context of the outcome: "request" or "response".
func (o Outcome) Context() string {
	if o >= Succeeded {
		return "response"
	}
	return "request"
}

// transition counts a router's changes of phase in this replica's view.
type transition struct{ router, to, reason string }

// disableReason names why a record disables its router, for metrics: the
// status it was set for, or "manual". A status no HTTP answer has is
// "other", so that a record written by hand cannot grow the metric.
func disableReason(r Record) string {
	switch {
	case r.Manual:
		return "manual"
	case r.Status < 100 || r.Status > 599:
		return "other"
	default:
		return "status_" + strconv.Itoa(r.Status)
	}
}

// failureReports counts the failures reported, by router and status.
type failureReports struct {
	mu sync.Mutex
	n  map[failureKey]uint64
}

// failureKey keeps a path no pool has as OtherRouter, so that what
// gecholog sends cannot grow the metric beyond the pools' routers and the
// statuses that count as failures (all from 100 to 599).
type failureKey struct {
	router string
	status int
}

// OtherRouter stands in Stats.FailureReports for every path no pool has.
const OtherRouter = "other"

func (f *failureReports) add(rt *route, status int) {
	k := failureKey{router: OtherRouter, status: status}
	if rt != nil {
		k.router = rt.path
	}
	f.mu.Lock()
	if f.n == nil {
		f.n = map[failureKey]uint64{}
	}
	f.n[k]++
	f.mu.Unlock()
}

// Stats is a snapshot of what a replica has done since it started.
type Stats struct {
	Calls [numOutcomes]uint64 // by Outcome
	// FailureReports are the failures reported, by Router (OtherRouter
	// for a path no pool has) and Status.
	FailureReports []Count
	Choices        []Count // by ingress and router
	Transitions    []Count // changes of phase in this replica's view, by router, phase and reason
	Disabled       int     // routers not enabled now: disabled, manual or on probation
	KVWrites       uint64  // writes to the bucket, including failed ones
	KVErrors       uint64  // writes that failed (a lost compare-and-set race is not an error)
	// KVFailures are the reads and writes of the store that failed, each
	// retried, by cause (as WriteCauses orders them), conflicts included.
	KVFailures  [len(WriteCauses)]uint64
	WatchEvents uint64    // changes heard from the bucket
	ViewRepairs uint64    // routers whose view Verify found differing from the bucket
	LastWatch   time.Time // when the last one arrived; zero if none has
	// Usage is the tokens and spend of every router of the pools, then of
	// OtherRouter: counted from the transaction log, which every replica
	// hears whole, so they are the fleet's totals since this replica
	// started.
	Usage []RouterUsage
}

// Count is one labelled counter of Stats.
type Count struct {
	Ingress, Router string // Choices
	To, Reason      string // Transitions: To is the new Phase's name
	Status          string // FailureReports
	N               uint64
}

// Stats returns a snapshot of the replica's counters.
func (b *Broker) Stats() Stats {
	var s Stats
	for i := range s.Calls {
		s.Calls[i] = b.calls[i].Load()
	}
	t := b.cur()
	for _, ingress := range t.order {
		p := t.pools[ingress]
		for i, r := range p.routers {
			s.Choices = append(s.Choices, Count{Ingress: p.ingress, Router: r.Path, N: p.chosen[i].Load()})
		}
	}
	b.failureReports.mu.Lock()
	for k, n := range b.failureReports.n {
		s.FailureReports = append(s.FailureReports, Count{Router: k.router, Status: strconv.Itoa(k.status), N: n})
	}
	b.failureReports.mu.Unlock()
	s.KVWrites = b.kvWrites.Load()
	s.KVErrors = b.kvErrors.Load()
	for i := range s.KVFailures {
		s.KVFailures[i] = b.kvFailures[i].Load()
	}
	s.WatchEvents = b.watchEvents.Load()
	s.ViewRepairs = b.repairs.Load()
	s.Usage = b.usage()
	if ns := b.lastWatch.Load(); ns != 0 {
		s.LastWatch = time.Unix(0, ns)
	}
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	for t, n := range b.transitions {
		s.Transitions = append(s.Transitions, Count{Router: t.router, To: t.to, Reason: t.reason, N: n})
	}
	for _, rt := range b.cur().members {
		if phase(rt.live, now) != Enabled {
			s.Disabled++
		}
	}
	return s
}

func (b *Broker) countWrite(err error) {
	b.kvWrites.Add(1)
	if err != nil && !errors.Is(err, ErrConflict) {
		b.kvErrors.Add(1)
	}
}
