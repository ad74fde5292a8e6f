package ops

import (
	"context"
	"encoding/json"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/replica"
)

// The replicas tell each other their counts on the stats subject when they
// change and at least every heartbeat (replica.StatsSubject); status listens
// there until it has heard every replica and adds them up, as each
// replica does, to show what the strategies and the failure-rate rule
// read. It does not ask them to tell at once (replica.AskStats): a viewer
// may not publish there, where it could forge counts.

// fleetListen is how long a one-shot status listens at most: every running
// replica speaks at least once in it, at its heartbeat; longer once a
// replica says the fleet's heartbeats are further apart (a fleet of more
// than a dozen: replica.StatsMessage.Every, see fleet.listenFor). It stops sooner
// once it has heard as many replicas as each of them says it hears, plus
// itself (StatsMessage's Peers): an idle replica's next heartbeat, or at
// once while the fleet has calls. A forged word can end that one listen
// early, and hide replicas from that one output (display only, as a
// forged goodbye does); with a replica from before Peers was told, status
// listens the whole heartbeat.
const fleetListen = replica.StatsAtLeast + 250*time.Millisecond

// fleet hears the replicas' statistics until stopped.
type fleet struct {
	sub     *nats.Subscription
	subject string
	began   time.Time // when it began to hear
	mu      sync.Mutex
	heard   map[string]heardStats // by replica
	// router is the router disable or enable waits for word of (empty:
	// none), and held what each replica heard last said its view took of
	// it.
	router string
	held   map[string]replica.TakenTold
	// news receives when something confirm reads changed: a replica first
	// heard, one that says something new of router or a new count of its
	// peers, or one that says goodbye. Never blocks.
	news chan struct{}
	// spoke receives each time a replica is heard, for listen. Never
	// blocks.
	spoke chan struct{}
}

type heardStats struct {
	at  time.Time
	msg replica.StatsMessage
}

// hearFleet subscribes to the replicas' statistics of bucket. A failure to
// subscribe is no error for status: it shows what the bucket says, and
// says the statistics are missing.
// maxHeard bounds the replicas status names: anyone may publish on the
// stats subject, and forged names must not grow the table without end.
const maxHeard = 256

func hearFleet(nc *nats.Conn, bucket string) *fleet {
	f := newFleet(bucket)
	f.sub, _ = nc.Subscribe(f.subject, func(m *nats.Msg) {
		if ws := replica.Words(m); ws != nil {
			f.hearCounts(ws)
			return
		}
		f.hear(m.Data)
	})
	return f
}

// hearCounts takes the binary words of replicas already heard: their
// counts, told every few milliseconds while they change, replace those of
// their last whole word, which keeps the rest (latency, headroom,
// sessions). A replica not heard yet is taken from its whole word.
func (f *fleet) hearCounts(ws []replica.Word) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, w := range ws {
		h, ok := f.heard[w.ID]
		if !ok {
			continue
		}
		was := make(map[string]replica.RouterStats, len(h.msg.Routers))
		for _, rs := range h.msg.Routers {
			was[rs.Router] = rs
		}
		routers := make([]replica.RouterStats, 0, len(w.Counts))
		for _, c := range w.Counts {
			rs := was[c.Router]
			rs.Router, rs.Chosen, rs.Reported, rs.Calls, rs.Failures = c.Router, c.Chosen, c.Reported, c.Calls, c.Failures
			routers = append(routers, rs)
		}
		h.msg.Routers, h.at = routers, time.Now()
		f.heard[w.ID] = h
	}
}

// changedOnto is the routers of a replica's last word with a word of the
// routers changed since its last whole word taken onto them: their
// counts replace those told before, which keep the rest (latency,
// headroom, sessions), and a router no longer counted shows none.
func changedOnto(was, changed []replica.RouterStats) []replica.RouterStats {
	out := slices.Clone(was)
	at := make(map[string]int, len(out))
	for i, rs := range out {
		at[rs.Router] = i
	}
	for _, c := range changed {
		i, ok := at[c.Router]
		if !ok {
			at[c.Router] = len(out)
			out = append(out, c)
			continue
		}
		rs := &out[i]
		rs.Chosen, rs.Reported, rs.Calls, rs.Failures, rs.LastSuccess, rs.Failing = c.Chosen, c.Reported, c.Calls, c.Failures, c.LastSuccess, c.Failing
	}
	return out
}

// newFleet is a fleet of bucket that has heard nothing yet, and hears
// nothing until hear is called.
func newFleet(bucket string) *fleet {
	return &fleet{subject: replica.StatsSubject(bucket), began: time.Now(), heard: map[string]heardStats{},
		held: map[string]replica.TakenTold{}, news: make(chan struct{}, 1), spoke: make(chan struct{}, 1)}
}

// hear takes one word told on the stats subject.
func (f *fleet) hear(data []byte) {
	var msg replica.StatsMessage
	if len(data) > 1<<20 || json.Unmarshal(data, &msg) != nil || msg.ID == "" || len(msg.ID) > replica.MaxID {
		return
	}
	f.mu.Lock()
	old, known := f.heard[msg.ID]
	news := false
	switch {
	case msg.Bye:
		// It stops: confirm waits for it no more.
		delete(f.heard, msg.ID)
		delete(f.held, msg.ID)
		news = known
	case known || len(f.heard) < maxHeard:
		if msg.Changed && known {
			msg.Routers = changedOnto(old.msg.Routers, msg.Routers)
		}
		f.heard[msg.ID] = heardStats{at: time.Now(), msg: msg}
		news = f.took(&msg) || !known || !samePeers(old.msg.Peers, msg.Peers)
	}
	f.mu.Unlock()
	signal(f.spoke)
	if news {
		signal(f.news)
	}
}

// signal sends on c, a channel of one, unless a word already waits there.
func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// listenOut waits until every replica of the fleet was heard (all), or f
// has listened listenFor since it began to hear, or ctx ends: a fleet
// heard that long (status --watch after its first frame) is listened to
// at once.
func (f *fleet) listenOut(ctx context.Context) error {
	deadline := time.NewTimer(0)
	defer deadline.Stop()
	for !f.all() {
		left := f.listenFor() - time.Since(f.began)
		if left <= 0 {
			return nil
		}
		deadline.Reset(left)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
		case <-f.spoke:
		}
	}
	return nil
}

// listenFor is how long to listen to hear every running replica:
// fleetListen, or a quarter more than the longest heartbeat a replica
// heard says it keeps.
func (f *fleet) listenFor() time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := fleetListen
	for _, h := range f.heard {
		d = max(d, h.msg.Heartbeat()*5/4)
	}
	return d
}

// stands says whether h, heard, still stands at now: a replica silent for
// three of its heartbeats has stopped (the replicas forget each other
// after the same time).
func (h *heardStats) stands(now time.Time) bool {
	return now.Sub(h.at) <= broker.Silence(h.msg.Heartbeat())
}

// all says status has heard the whole fleet: some replica, and as many as
// any of them says the fleet has. A replica that does not say (one from
// before Peers was told) leaves it to the heartbeat.
func (f *fleet) all() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	fleet := 1
	for _, h := range f.heard {
		if h.msg.Peers == nil {
			return false
		}
		fleet = max(fleet, min(*h.msg.Peers, maxHeard-1)+1) // bounded: anyone may publish there
	}
	return len(f.heard) >= fleet
}

// samePeers says two words told the same count of peers (nil: none told).
func samePeers(a, b *int) bool {
	return a == nil && b == nil || a != nil && b != nil && *a == *b
}

func (f *fleet) stop() {
	if f.sub != nil {
		_ = f.sub.Unsubscribe()
	}
}

// fleetView is the fleet's statistics per router, as of one moment.
type fleetView struct {
	replicas []string // the replicas heard, in ID order
	// configs are the configuration each replica heard told it runs by.
	configs []replica.ReplicaRevision
	routers map[string]*routerFigures
	// logHeard is when any replica last heard gecholog's transaction log
	// (zero: none has).
	logHeard time.Time
	// stale is why each replica that said its view may be stale said so.
	stale map[string]string
}

type routerFigures struct {
	chosen, reported int64
	calls, failures  int64
	latency          time.Duration
	headroom         *float64
	rateLimitedUntil time.Time // zero: not waiting
	// sessions pinned and moved: the largest any replica told (see view).
	sessions *replica.RouterSessionsTold
}

// view adds up what each replica heard, whose word still stands, told.
func (f *fleet) view(now time.Time) fleetView {
	f.mu.Lock()
	defer f.mu.Unlock()
	v := fleetView{routers: map[string]*routerFigures{}}
	var latest time.Time // of the message latency and headroom are taken from
	for id, h := range f.heard {
		if !h.stands(now) {
			delete(f.heard, id)
			delete(f.held, id)
			continue
		}
		v.replicas = append(v.replicas, id)
		if h.msg.Stale != "" {
			if v.stale == nil {
				v.stale = map[string]string{}
			}
			v.stale[id] = h.msg.Stale
		}
		told := replica.Heard(id, h.msg.Config)
		told.Sessions = h.msg.Sessions.Heard()
		v.configs = append(v.configs, told)
		if h.msg.LogHeard != 0 {
			if at := time.Unix(0, h.msg.LogHeard); at.After(v.logHeard) {
				v.logHeard = at
			}
		}
		newest := h.msg.At.After(latest)
		if newest {
			latest = h.msg.At
		}
		for _, rs := range h.msg.Routers {
			r := v.routers[rs.Router]
			if r == nil {
				r = &routerFigures{}
				v.routers[rs.Router] = r
			}
			r.chosen += rs.Chosen
			r.reported += rs.Reported
			r.calls += rs.Calls
			r.failures += rs.Failures
			// Every replica hears the whole transaction log, so they agree
			// on these: the newest word is enough.
			if rs.LatencyMS > 0 && (newest || r.latency == 0) {
				r.latency = time.Duration(rs.LatencyMS * float64(time.Millisecond))
			}
			if rs.Headroom != nil && (newest || r.headroom == nil) {
				h := min(max(*rs.Headroom, 0), 1) // a share, whatever a message says
				r.headroom = &h
			}
			// Every replica hears the same log, so each remembers the same
			// sessions: the figures are the fleet's, not to be added up. The
			// largest is shown, not the newest: a replica started a moment
			// ago remembers only what it heard since, and has counted fewer
			// moves. A largest cannot wrap, whatever a message says.
			if t := rs.Sessions.Heard(); t != nil {
				if r.sessions == nil {
					r.sessions = &replica.RouterSessionsTold{}
				}
				r.sessions.Pinned = max(r.sessions.Pinned, t.Pinned)
				r.sessions.MovedIn = max(r.sessions.MovedIn, t.MovedIn)
				r.sessions.MovedOut = max(r.sessions.MovedOut, t.MovedOut)
			}
			if newest || r.rateLimitedUntil.IsZero() {
				r.rateLimitedUntil = time.Time{}
				if rs.RateLimitedUntil != 0 {
					r.rateLimitedUntil = time.Unix(0, rs.RateLimitedUntil)
				}
			}
		}
	}
	slices.Sort(v.replicas)
	return v
}

// figures fills row with the fleet's figures for its router at now; share
// is among the pool's routers. A rate-limit reset further than maxWait
// ahead, which no replica holds, is not shown.
func (v fleetView) figures(row *statusRow, pool broker.Pool, now time.Time, maxWait time.Duration) {
	if len(v.replicas) == 0 {
		return
	}
	r := v.routers[row.Router]
	if r == nil {
		r = &routerFigures{}
	}
	inFlight := max(r.chosen-r.reported, 0)
	row.InFlight = &inFlight
	var all int64
	for _, pr := range pool.Routers {
		if o := v.routers[pr.Path]; o != nil {
			all += o.chosen
		}
	}
	if all > 0 {
		share := float64(r.chosen) / float64(all)
		row.Share = &share
	}
	if r.latency > 0 && r.latency <= broker.InFlightBoundRange.Max { // a moving average of samples, none longer than the longest in-flight bound
		ms := float64(r.latency) / float64(time.Millisecond)
		row.LatencyMS = &ms
	}
	row.Headroom = r.headroom
	if u := r.rateLimitedUntil; u.After(now) && !u.After(now.Add(maxWait+time.Second)) {
		until := u.UTC().Format(time.RFC3339)
		left := int64((u.Sub(now) + time.Second - 1) / time.Second)
		row.RateLimitedUntil, row.rateLimitLeft = &until, &left
	}
	if row.Affinity != nil && row.Affinity.Session {
		// A pool with "session" affinity remembers sessions: none told is
		// none pinned.
		row.Sessions = &replica.RouterSessionsTold{}
		if r.sessions != nil {
			*row.Sessions = *r.sessions
		}
	}
	calls := r.calls
	row.Calls = &calls
	if calls > 0 {
		rate := float64(r.failures) / float64(calls)
		row.FailureRate = &rate
	}
}
