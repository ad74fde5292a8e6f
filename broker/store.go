package broker

import "context"

// Store shares router health between replicas. The kv package implements
// it on a NATS JetStream bucket; a nil Store keeps health in this process.
//
// Every write is a compare-and-set on the router's revision, so replicas
// that decide at the same moment make one write between them.
type Store interface {
	// Latest returns the last change of router: its live record (live
	// true), or else the memo its last disable left, with the revision a
	// write must name. Revision 0 means the router has no history.
	Latest(ctx context.Context, router string) (e Entry, live bool, err error)
	// Update makes r the router's live record if the router is still at
	// rev, and returns the new revision; otherwise it gives ErrConflict.
	Update(ctx context.Context, r Record, rev uint64) (uint64, error)
	// Release enables the router, keeping memo, if it is still at rev,
	// and returns the new revision; otherwise it gives ErrConflict.
	Release(ctx context.Context, memo Record, rev uint64) (uint64, error)
	// Announce tells the other replicas at once of a disable this replica
	// has decided and is about to write, so that they avoid the router
	// while the write is on its way: a store may hold writes up for
	// seconds (a JetStream stream electing a leader). The others receive
	// it as a provisional Event. It must not block.
	Announce(r Record)
}
