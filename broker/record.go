package broker

import (
	"errors"
	"time"
)

// Record is a router's health as every replica shares it: why and until
// when it is out of its pools, and what the failure policy remembers of it.
// A store keeps one per router that is not enabled (its live record), and
// a memo of the last one when it is enabled again, from which the backoff
// level and the failure count survive restarts.
type Record struct {
	Router string
	// Status is the status code that caused the disable, 0 when none did.
	Status int
	Reason string
	// At is when the router was disabled.
	At time.Time
	// Until is when the router comes back. It is the truth; a store's own
	// expiry is only clean-up. The zero time means until someone enables it.
	Until time.Time
	// By names the replica (or person) that wrote the record.
	By string
	// Manual marks a disable set by an operator: automatic logic never
	// lifts it early, overwrites it or probes the router.
	Manual bool
	// Level is the backoff level of an automatic disable: it lasted the
	// disabled time times the multiplier to this power.
	Level int
	// Probe is the claim on the one trial call a router on probation gets
	// after Until, held by one replica until the claim's Until.
	Probe *Probe
	// Failures counted consecutive failures not yet enough to disable, in
	// memos of brokers before the replicas told each other their counts;
	// read, and ignored.
	Failures int
	// Ended is when a disable stopped disabling (a probe succeeded, or it
	// lapsed). Kept in a memo, from which the backoff level decays.
	Ended time.Time
}

// Probe is a replica's claim on a router's half-open trial call.
type Probe struct {
	By    string
	At    time.Time
	Until time.Time
}

// ActiveAt reports whether the record still disables its router at t.
func (r Record) ActiveAt(t time.Time) bool {
	return r.Until.IsZero() || t.Before(r.Until)
}

// Entry is a record as a store holds it.
type Entry struct {
	Record   Record
	Revision uint64
	// Created is when the store kept this revision, by the store's clock:
	// an anchor no writer can forge.
	Created time.Time
}

// Event is a change to one router's record, as a store's watcher reports
// it to [Broker.Observe].
type Event struct {
	Router string
	// Entry is the record now in force, or nil when the router was enabled
	// (its record deleted or expired) or its record cannot be read.
	Entry *Entry
	// Memo is what the router's last disable left behind, or nil.
	Memo *Record
	// Revision is the store's revision of the change; 0 when the change
	// was inferred, not read, or is provisional.
	Revision uint64
	// Created is when the store kept the change, by the store's clock;
	// zero when unknown.
	Created time.Time
	// Provisional marks a disable another replica has decided and is
	// writing, heard before the store has it (see Store.Announce): Entry
	// is its record. A replica avoids the router on its word until the
	// store says something newer of it, and never lets it lift or shorten
	// a disable.
	Provisional bool
	// Reset says the store is not the one the view's revisions came from:
	// its bucket was deleted and made again, or purged, and revisions
	// started over. The view forgets the revisions it holds (not the
	// records), and the store then tells every key's current state,
	// and keys no longer there as deleted. Router is empty.
	Reset bool
}

// Word is the Event a store's reading of router says (see Store.Latest):
// its live record, or else the memo its last disable left; neither when
// the router has no history (revision 0).
func Word(router string, e Entry, live bool) Event {
	ev := Event{Router: router, Revision: e.Revision, Created: e.Created}
	switch {
	case live:
		ev.Entry = &e
	case e.Revision != 0:
		ev.Memo = &e.Record
	}
	return ev
}

// ErrConflict is what a [Store] gives when a key changed since the
// revision a write was based on.
var ErrConflict = errors.New("key revision changed")
