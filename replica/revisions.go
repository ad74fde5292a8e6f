package replica

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gecholog/broker/internal/safetext"
)

// Drift: each replica tells the others, with its counts on the stats
// subject, the revision of the fleet's configuration it runs and the
// refusal it shows, so that `broker status`, the status page and /metrics
// show every replica's revision and mark those out of step.
//
// What is heard is only shown, never acted on. Anyone who may publish on
// the stats subject can tell any revision under any name; that changes
// what status and the pages display (bounded below), never the pools or
// the policy a replica runs, which come from the configuration bucket
// alone (fleetconfig.go).

// ConfigTold is what a replica tells the others of the configuration it
// runs by.
type ConfigTold struct {
	// Revision is the revision in force; 0: the replica's own settings.
	Revision uint64 `json:"revision"`
	// Refused is "refused revision N: why" while the replica refuses the
	// newest revision; "" otherwise. Read at most MaxShown characters.
	Refused string `json:"refused,omitempty"`
}

// Heard is what replica id told as c (nil: it told none), as it is kept:
// the name and the refusal cut to safetext.MaxShown characters, escaped
// only where they are shown.
func Heard(id string, c *ConfigTold) ReplicaRevision {
	r := ReplicaRevision{ID: safetext.Cut(id, safetext.MaxShown)}
	if c != nil {
		rev := c.Revision
		r.Revision, r.Refused = &rev, safetext.Cut(c.Refused, safetext.MaxShown)
	}
	return r
}

// ReplicaRevision is one replica's configuration as heard, marked against
// the fleet's. Its JSON names are an interface (`broker status --replicas
// --json`): add fields, never rename them.
type ReplicaRevision struct {
	ID string `json:"id"`
	// Revision is the revision the replica runs; null when it told none
	// (a broker from before replicas told their revisions).
	Revision *uint64 `json:"revision"`
	// Refused is "refused revision N: why" while it refuses the newest.
	Refused string `json:"refused,omitempty"`
	// Drift says why the replica is out of step: its refusal, or that it
	// runs another revision than the fleet's; "" when it is in step.
	Drift string `json:"drift,omitempty"`
	// Sessions are its calls of pools with affinity, as it told them;
	// null when it told none. Only `broker status` and the pages fill it.
	Sessions *SessionsTold `json:"sessions,omitempty"`
}

// Revisions is the fleet's configuration as heard at one moment.
type Revisions struct {
	// Replicas are every replica heard, marked; in ID order.
	Replicas []ReplicaRevision
	// Revision is the one the replicas are held to: the bucket's newest
	// when known (Bucket names the bucket then), else the highest any
	// replica runs.
	Revision uint64
	Bucket   string
	// Drift counts the replicas out of step.
	Drift int
}

// MarkRevisions marks each of rs that is out of step: one that refuses a
// revision, or runs another than latest, the newest revision in the
// configuration bucket named bucket. With latest 0 (no bucket, or none
// read) each is held to the highest revision any of rs runs instead.
func MarkRevisions(rs []ReplicaRevision, bucket string, latest uint64) Revisions {
	f := Revisions{Replicas: slices.SortedFunc(slices.Values(rs), func(a, b ReplicaRevision) int { return strings.Compare(a.ID, b.ID) })}
	if latest != 0 {
		f.Revision, f.Bucket = latest, bucket
	} else {
		for _, r := range rs {
			if r.Revision != nil {
				f.Revision = max(f.Revision, *r.Revision)
			}
		}
	}
	for i := range f.Replicas {
		r := &f.Replicas[i]
		r.Drift = ""
		switch {
		case r.Revision == nil:
			continue // told nothing: neither in step nor out
		case r.Refused != "":
			r.Drift = r.Refused
		case *r.Revision < f.Revision:
			r.Drift = fmt.Sprintf("behind: runs revision %d, not %d", *r.Revision, f.Revision)
		case *r.Revision > f.Revision:
			r.Drift = fmt.Sprintf("runs revision %d, which is not the newest in bucket %s (%d)", *r.Revision, bucket, f.Revision)
		default:
			continue
		}
		f.Drift++
	}
	return f
}

// maxRevisionsNamed bounds the revisions Summary names.
const maxRevisionsNamed = 5

// Summary says in one line which revisions the replicas run and whether
// they are in step; "" when no replica told a revision.
func (f Revisions) Summary() string {
	runs := map[uint64]int{}
	told, refusing := 0, 0
	for _, r := range f.Replicas {
		if r.Revision != nil {
			runs[*r.Revision]++
			told++
			if r.Refused != "" {
				refusing++
			}
		}
	}
	if told == 0 {
		return ""
	}
	of := "the highest any replica runs"
	if f.Bucket != "" {
		of = "the newest in bucket " + f.Bucket
	}
	if f.Drift == 0 {
		if f.Revision == 0 {
			return "every replica heard runs revision 0: its own pools and settings, no configuration bucket"
		}
		return fmt.Sprintf("every replica heard runs revision %d, %s", f.Revision, of)
	}
	revs := slices.Sorted(maps.Keys(runs))
	var named []string
	for i, rev := range revs {
		switch {
		case i == maxRevisionsNamed:
			named = append(named, fmt.Sprintf("and %d more revisions", len(revs)-i))
		case i == 0 && runs[rev] == 1:
			named = append(named, fmt.Sprintf("1 replica on revision %d", rev))
		case i == 0:
			named = append(named, fmt.Sprintf("%d replicas on revision %d", runs[rev], rev))
		default:
			named = append(named, fmt.Sprintf("%d on revision %d", runs[rev], rev))
		}
		if i == maxRevisionsNamed {
			break
		}
	}
	if refusing > 0 {
		of += fmt.Sprintf(" (%d refusing a newer revision)", refusing)
	}
	return fmt.Sprintf("DRIFT: %d of %d replicas out of step with revision %d, %s; %s",
		f.Drift, told, f.Revision, of, strings.Join(named, ", "))
}

// heardRevisions is what the other replicas told of their configuration,
// as long as each keeps telling, bounded as broker.Merge bounds their
// counts.
type heardRevisions struct {
	mu    sync.Mutex
	heard map[string]heardRevision // by replica
}

type heardRevision struct {
	at      time.Time
	silence time.Duration // how long it stands (broker.Silence)
	told    ReplicaRevision
}

const (
	// maxHeardRevisions bounds the replicas kept (broker's maxPeers): a
	// flood of forged names costs bounded memory until they fall silent.
	maxHeardRevisions = 1024
)

// hear keeps what replica id told at now, for silence: one silent for it
// has stopped, as for its counts.
func (h *heardRevisions) hear(id string, c *ConfigTold, s *SessionsTold, now time.Time, silence time.Duration) {
	told := Heard(id, c)
	told.Sessions = s.Heard()
	id = told.ID // kept by the name cut short: a long forged one costs no more
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.heard == nil {
		h.heard = map[string]heardRevision{}
	}
	if _, ok := h.heard[id]; !ok && len(h.heard) >= maxHeardRevisions {
		h.forget(now)
		if len(h.heard) >= maxHeardRevisions {
			return
		}
	}
	h.heard[id] = heardRevision{at: now, silence: silence, told: told}
}

// gone forgets replica id at once: it said it stops.
func (h *heardRevisions) gone(id string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.heard, Heard(id, nil).ID)
}

func (h *heardRevisions) forget(now time.Time) {
	for id, r := range h.heard {
		if now.Sub(r.at) > r.silence {
			delete(h.heard, id)
		}
	}
}

// list is every replica heard from within its silence of now, IDs
// cut to safetext.MaxShown characters.
func (h *heardRevisions) list(now time.Time) []ReplicaRevision {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.forget(now)
	out := make([]ReplicaRevision, 0, len(h.heard)+1)
	for _, r := range h.heard {
		out = append(out, r.told)
	}
	return out
}

// Revisions is the fleet's configuration as this replica hears it: its
// own and every other replica's that tells, each marked against the
// highest revision any of them runs.
func (r *Replica) Revisions() Revisions {
	own := r.conf.get()
	rs := append(r.heardRevs.list(time.Now()), ReplicaRevision{ID: r.cfg.ID, Revision: &own.Revision, Refused: own.Refused})
	return MarkRevisions(rs, "", 0)
}

// perRevision counts the replicas of f on each revision, the most
// populous first, at most n revisions; the rest are counted under
// "other", those that told none under "unknown".
func (f Revisions) perRevision(n int) (revs []string, counts []int) {
	runs := map[uint64]int{}
	unknown := 0
	for _, r := range f.Replicas {
		if r.Revision == nil {
			unknown++
			continue
		}
		runs[*r.Revision]++
	}
	keys := slices.SortedFunc(maps.Keys(runs), func(a, b uint64) int {
		return cmp.Or(cmp.Compare(runs[b], runs[a]), cmp.Compare(a, b))
	})
	other := 0
	for i, k := range keys {
		if i >= n {
			other += runs[k]
			continue
		}
		revs, counts = append(revs, fmt.Sprint(k)), append(counts, runs[k])
	}
	if other > 0 {
		revs, counts = append(revs, "other"), append(counts, other)
	}
	if unknown > 0 {
		revs, counts = append(revs, "unknown"), append(counts, unknown)
	}
	return revs, counts
}
