package ops

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/safetext"
	"github.com/gecholog/broker/replica"
)

// disable and enable confirm from the replicas' own word on the stats
// subject, which each tells within milliseconds of taking a change from
// the bucket (replica.StatsMessage.Taken), rather than from a question
// of their own that replicas answer: that needs no subject or permission
// beyond what status already has, and leaves no replica publishing to a
// reply subject whoever asks names. What a replica tells there is only
// shown: whoever may publish on it may forge a confirmation, never a
// change (docs/security.md).

const (
	// confirmWait bounds how long disable and enable wait, from their
	// write, for every replica heard to say it holds the write: one that
	// hears the bucket takes it and says so within milliseconds.
	confirmWait = 2 * time.Second
	// maxNamed bounds the replicas a confirming line names.
	maxNamed = 10
)

// confirmation is what the replicas heard on the stats subject said of a
// write while disable or enable waited.
type confirmation struct {
	subject   string   // the stats subject
	heard     []string // the replicas heard, in ID order
	confirmed []string // those that said they hold the write
	notYet    []string // heard, and not saying so within confirmWait
}

// confirm waits until every replica heard since listening says it holds
// router at revision rev or later in phase want, once it has heard the
// whole fleet or listened long enough, or until confirmWait has passed
// since the write, and returns what they said. It listens at most
// fleet.listenFor before trusting that every running replica was heard:
// an idle replica that does not take the write (one cut off from the
// bucket) speaks only at its heartbeat. It trusts it sooner once it has
// heard as many replicas as each says it hears (fleet.all, as status
// does): every replica that takes the write says so at once, and counts
// among its peers one that does not.
func (f *fleet) confirm(ctx context.Context, rev uint64, want broker.Phase, listening time.Time) confirmation {
	deadline := time.Now().Add(confirmWait)
	timer := time.NewTimer(confirmWait)
	defer timer.Stop()
	for {
		now := time.Now()
		c := f.confirmed(rev, want, now)
		listenFor := f.listenFor()
		listened := now.Sub(listening) >= listenFor || f.all()
		if listened && len(c.notYet) == 0 || !now.Before(deadline) || ctx.Err() != nil {
			return c
		}
		next := deadline // or when it has listened long enough, or a new word
		if !listened && listening.Add(listenFor).Before(next) {
			next = listening.Add(listenFor)
		}
		timer.Reset(next.Sub(now))
		select {
		case <-ctx.Done():
		case <-timer.C:
		case <-f.news:
		}
	}
}

// confirmed is what the replicas heard said of the write at now.
func (f *fleet) confirmed(rev uint64, want broker.Phase, now time.Time) confirmation {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := confirmation{subject: f.subject}
	for id, h := range f.heard {
		if !h.stands(now) {
			continue // stopped
		}
		c.heard = append(c.heard, id)
		if t, ok := f.held[id]; ok && t.Revision >= rev && t.Phase == want.String() {
			c.confirmed = append(c.confirmed, id)
		} else {
			c.notYet = append(c.notYet, id)
		}
	}
	slices.Sort(c.heard)
	slices.Sort(c.confirmed)
	slices.Sort(c.notYet)
	return c
}

// where says where a write holds: on every replica when every replica
// heard said it holds it, and otherwise in the bucket; tail says who
// said so and who did not.
func (c confirmation) where(bucket string) (where, tail string) {
	switch {
	case len(c.heard) == 0:
		return "in bucket " + bucket, fmt.Sprintf("; no replica heard on %s to confirm it", c.subject)
	case len(c.notYet) == 0 && len(c.heard) == 1:
		return "on every replica", "; confirmed by the 1 replica heard"
	case len(c.notYet) == 0:
		return "on every replica", fmt.Sprintf("; confirmed by all %d replicas", len(c.heard))
	}
	return "in bucket " + bucket, fmt.Sprintf("; confirmed by %d of %d replicas within %v; not yet: %s (a replica cut off from the bucket applies it once it hears the bucket again)",
		len(c.confirmed), len(c.heard), confirmWait, named(c.notYet))
}

// named lists replicas by name, as anyone who may publish on the stats
// subject may name them: each cut to safetext.MaxShown, at most maxNamed.
func named(ids []string) string {
	shown := make([]string, 0, min(len(ids), maxNamed)+1)
	for _, id := range ids[:min(len(ids), maxNamed)] {
		shown = append(shown, safetext.Clip(id, safetext.MaxShown))
	}
	if len(ids) > maxNamed {
		shown = append(shown, fmt.Sprintf("and %d more", len(ids)-maxNamed))
	}
	return strings.Join(shown, ", ")
}

// hearTaken keeps, per replica heard, the newest change of router its
// view says it took (see fleet.held); call it before the write.
func (f *fleet) hearTaken(router string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.router = router
}

// took notes what msg says its view took of the router heard for, and
// reports whether that is news. f.mu must be held.
func (f *fleet) took(msg *replica.StatsMessage) bool {
	if f.router == "" {
		return false
	}
	for _, t := range msg.Taken {
		if t.Router != f.router {
			continue
		}
		if old, ok := f.held[msg.ID]; !ok || old != t {
			f.held[msg.ID] = t
			return true
		}
		return false
	}
	return false
}
