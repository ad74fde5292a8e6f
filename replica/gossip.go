package replica

import (
	"context"
	"encoding/json"
	"log/slog"
	"slices"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gecholog/broker/broker"
)

// StatsSubject is the plain NATS subject on which the replicas tell each
// other the calls each chose and heard reported per router, from which
// every replica knows the calls in flight and the failures over the whole
// fleet: every few milliseconds while they change, at once on a failure
// or a change its view took from the bucket, and otherwise once a second,
// so that the others know the replica is there. `nats sub
// broker.stats.gl_broker` shows them.
func StatsSubject(bucket string) string { return "broker.stats." + bucket }

const (
	// statsEvery is how often a replica refreshes its statistics and
	// tells its counts when they changed, while the fleet has calls
	// (broker.Quiet says when it may wait longer), in a fleet of up to 11;
	// in a larger one, each spaces its words so that every replica hears
	// about a thousand a second (wordEvery), up to statsEveryMost.
	statsEvery     = 10 * time.Millisecond
	statsEveryMost = 20 * time.Millisecond
	// statsCalm is how often, at most, it tells them, while they change,
	// when no pool chooses by the fleet's calls in flight
	// (broker.ReadsInFlight): the others then read only its failures,
	// told at once all the same, and its calls within the failure-rate
	// window, which a sixtieth of it does not change much (a second, at
	// most, for the default minute); in a fleet of more than 11, so that
	// every replica hears about a hundred a second.
	statsCalm = 100 * time.Millisecond
	// StatsAtLeast is how often it tells them anyway, its heartbeat, so
	// that the others know it is there, in a fleet of up to heardEach+1
	// replicas; in a larger one each spaces its heartbeats so that every
	// replica hears about heardEach a second (heartbeat), and says how far
	// apart they are (StatsMessage.Every): the others forget it after
	// three (broker.Silence).
	StatsAtLeast = time.Second
	// heardEach is about how many heartbeats a second an idle replica
	// hears: the messages out of the server grow linearly with the fleet,
	// not with its square.
	heardEach = 10
	// nudgeFloor is the least time between two words told at once, on a
	// failure, rather than at the tick.
	nudgeFloor = time.Millisecond
	// maxStats bounds a counts message read: a thousand routers fit.
	maxStats = 1 << 20
	// MaxID bounds a replica's name (BROKER_ID): a counts message naming
	// a longer one is forged, and is dropped rather than kept by name.
	MaxID = 256
	// takenFor is how long a replica tells a change its view took from
	// the bucket: well past the 2 s `broker disable` waits for the word.
	takenFor = 10 * time.Second
	// MaxTaken bounds the changes a replica tells at once, newest first.
	MaxTaken = 64
)

// StatsMessage is what a replica tells the others: its counts per router
// within the in-flight bound, and what it knows of each router's latency
// and headroom (the same on every replica, which all hear gecholog's
// transaction log), for `broker status`.
type StatsMessage struct {
	ID      string        `json:"id"`
	At      time.Time     `json:"at"`
	Routers []RouterStats `json:"routers"`
	// LogHeard is when the replica last heard gecholog's transaction log,
	// in unix nanoseconds (absent: never).
	LogHeard int64 `json:"log_heard,omitempty"`
	// Config is the configuration the replica runs by (absent: a broker
	// from before replicas told it), for `broker status` and the status
	// page; it changes nothing a replica runs (revisions.go).
	Config *ConfigTold `json:"config,omitempty"`
	// Sessions are the replica's calls of pools with affinity by what
	// became of their key (absent: a broker from before replicas told
	// them); only shown, like Config.
	Sessions *SessionsTold `json:"sessions,omitempty"`
	// Stale says why the replica's view may be stale: its bucket has not
	// answered for a while (absent: it answers); only shown, like Config.
	Stale string `json:"stale,omitempty"`
	// Taken are the routers whose health the replica's view took from the
	// bucket within the last 10 s, newest first, at most MaxTaken: its
	// word to `broker disable` and `enable` that it holds their write
	// (absent: none, or a broker from before replicas told them). Only
	// shown, like Config: whoever may publish here may forge it, and no
	// replica acts on it.
	Taken []TakenTold `json:"taken,omitempty"`
	// Ask asks every replica that hears it to tell its counts at once:
	// a replica sends it with its first word, so that it learns the
	// fleet's counts without waiting for their heartbeats; AskStats sends
	// it without an ID.
	Ask bool `json:"ask,omitempty"`
	// Bye says the replica stops: the others forget it at once rather
	// than after broker.PeerSilence.
	Bye bool `json:"bye,omitempty"`
	// Changed says Routers names only the routers whose counts changed
	// since the replica's last JSON word, one no longer counted with none;
	// the others' stand (changes.go). A broker from before it takes them
	// as whole, until the next whole word.
	Changed bool `json:"changed,omitempty"`
	// Every is the time between its heartbeats, in milliseconds (absent:
	// StatsAtLeast, a broker from before it said); see Heartbeat.
	Every int64 `json:"every_ms,omitempty"`
	// Peers is how many other replicas it hears (absent: a broker from
	// before replicas told it), so that `broker status` stops listening
	// once it has heard the whole fleet rather than after a heartbeat.
	Peers *int `json:"peers,omitempty"`
}

// Heartbeat is the time between the heartbeats of the replica that told
// m, held within StatsAtLeast and broker.MaxHeartbeat (anyone may publish
// on the stats subject): its word stands for broker.Silence of it.
func (m *StatsMessage) Heartbeat() time.Duration {
	return time.Duration(min(max(m.Every, StatsAtLeast.Milliseconds()), broker.MaxHeartbeat.Milliseconds())) * time.Millisecond
}

// heartbeat is the time between a replica's heartbeats when it hears
// peers other replicas: a second, or longer in a fleet of more than
// heardEach+1, so that each hears about heardEach a second.
func heartbeat(peers int) time.Duration {
	return min(max(StatsAtLeast, time.Duration(peers)*StatsAtLeast/heardEach), broker.MaxHeartbeat)
}

// wordEvery is how long a replica that hears peers other replicas waits
// between two words while its counts change: every statsEvery, or, when
// no pool reads the fleet's calls in flight (calm), a sixtieth of the
// failure-rate window within statsCalm and StatsAtLeast; each stretched
// in a larger fleet so that a replica hears a bounded number of words a
// second: the words a fleet of N tells are delivered N(N−1) times.
// Stretching the words that pools reading the calls in flight read is
// capped at statsEveryMost, so that the replicas' counts still agree
// within 25 ms. Words told through the relay (relaying) are delivered 2N
// times, and are not stretched.
func wordEvery(peers int, calm bool, window time.Duration, relaying bool) time.Duration {
	if relaying {
		peers = 0
	}
	if calm {
		return max(statsCalm, min(window/60, StatsAtLeast), time.Duration(peers)*statsCalm/heardEach)
	}
	return min(max(statsEvery, time.Duration(peers)*statsEvery/heardEach), statsEveryMost)
}

// TakenTold is a change a replica's view took from the bucket: the
// router, the bucket's revision of the change and the phase the view holds
// ("enabled", "disabled", "probation" or "manual").
type TakenTold struct {
	Router   string `json:"router"`
	Revision uint64 `json:"rev"`
	Phase    string `json:"phase"`
}

func takenTold(taken []broker.Taken) []TakenTold {
	if len(taken) == 0 {
		return nil
	}
	out := make([]TakenTold, len(taken))
	for i, t := range taken {
		out[i] = TakenTold{Router: t.Router, Revision: t.Revision, Phase: t.Phase.String()}
	}
	return out
}

// askMessage is what AskStats publishes: no ID, so no replica takes it
// for another's counts (replicas from before Ask drop it unread).
var askMessage = []byte(`{"ask":true}`)

// AskStats asks every replica of bucket to tell its counts on the stats
// subject at once, rather than at its next heartbeat (StatsAtLeast), for
// whoever listens there.
func AskStats(nc *nats.Conn, bucket string) error {
	return nc.Publish(StatsSubject(bucket), askMessage)
}

// RouterStats is one router in a StatsMessage: calls chosen and reports
// heard within the in-flight bound, calls and failures within the
// failure-rate window, and the last success and the failures since that
// the replica knows of (its own and the others'), in unix nanoseconds.
type RouterStats struct {
	Router      string  `json:"router"`
	Chosen      int64   `json:"chosen"`
	Reported    int64   `json:"reported"`
	Calls       int64   `json:"calls,omitempty"`
	Failures    int64   `json:"failures,omitempty"`
	LastSuccess int64   `json:"last_success,omitempty"`
	Failing     []int64 `json:"failing,omitempty"`
	// LatencyMS and Headroom (a share of the rate limit left, 0 to 1) are
	// what the replica knows of the upstream from the transaction log,
	// absent while it knows nothing; for `broker status`. Every replica
	// knows them alike, so only the one whose name comes first tells them
	// (countsOnly), and RateLimitedUntil likewise.
	LatencyMS float64  `json:"latency_ms,omitempty"`
	Headroom  *float64 `json:"headroom,omitempty"`
	// RateLimitedUntil is when a router its upstream said has none left
	// takes calls again, in unix nanoseconds (absent: it is not waiting).
	RateLimitedUntil int64 `json:"rate_limited_until,omitempty"`
	// Sessions are the sessions the replica remembers pinned to the
	// router and those it heard move (absent: none, or a broker from
	// before replicas told them); only shown.
	Sessions *RouterSessionsTold `json:"sessions,omitempty"`
}

func toCounts(rs RouterStats) broker.Counts {
	c := broker.Counts{Router: rs.Router, Chosen: rs.Chosen, Reported: rs.Reported, Calls: rs.Calls, Failures: rs.Failures}
	if rs.LastSuccess != 0 {
		c.LastSuccess = time.Unix(0, rs.LastSuccess)
	}
	for _, ns := range rs.Failing {
		c.Failing = append(c.Failing, time.Unix(0, ns))
	}
	c.Latency = time.Duration(rs.LatencyMS * float64(time.Millisecond))
	if rs.Headroom != nil {
		c.Headroom, c.HeadroomKnown = *rs.Headroom, true
	}
	if rs.RateLimitedUntil != 0 {
		c.RateLimitedUntil = time.Unix(0, rs.RateLimitedUntil)
	}
	return c
}

// countsOnly is routers without what every replica knows alike from the
// transaction log (latency, headroom, a rate limit's reset), and without
// the routers that leaves empty: only the replica whose name comes first
// (broker.Relay) tells those, for `broker status`, which shows the newest
// it heard. So a heartbeat grows with the routers a replica counts calls
// of, not with every router whose latency the fleet knows. A word of
// changes keeps every router, an empty one too: it says the router is
// no longer counted.
func countsOnly(routers []RouterStats, changes bool) []RouterStats {
	out := routers[:0]
	for _, rs := range routers {
		rs.LatencyMS, rs.Headroom, rs.RateLimitedUntil = 0, nil, 0
		if changes || rs.Chosen != 0 || rs.Reported != 0 || rs.Calls != 0 || rs.Failures != 0 || rs.LastSuccess != 0 || len(rs.Failing) > 0 {
			out = append(out, rs)
		}
	}
	return out
}

func fromCounts(c broker.Counts) RouterStats {
	rs := RouterStats{Router: c.Router, Chosen: c.Chosen, Reported: c.Reported, Calls: c.Calls, Failures: c.Failures}
	if !c.LastSuccess.IsZero() {
		rs.LastSuccess = c.LastSuccess.UnixNano()
	}
	for _, t := range c.Failing {
		rs.Failing = append(rs.Failing, t.UnixNano())
	}
	rs.LatencyMS = float64(c.Latency) / float64(time.Millisecond)
	if c.HeadroomKnown {
		h := c.Headroom
		rs.Headroom = &h
	}
	if !c.RateLimitedUntil.IsZero() {
		rs.RateLimitedUntil = c.RateLimitedUntil.UnixNano()
	}
	return rs
}

// shareStats tells this replica's counts to the others and takes theirs
// until the replica stops.
func (r *Replica) shareStats() error {
	subject := StatsSubject(r.cfg.Bucket)
	asked := make(chan struct{}, 1)
	r.words.kick = make(chan struct{}, 1)
	sub, err := r.nc.Subscribe(subject, func(m *nats.Msg) {
		if len(m.Data) > maxStats {
			return
		}
		if m.Header != nil && m.Header.Get(countsHeader) != "" {
			r.hearWords(m)
			return
		}
		if m.Header != nil && m.Header.Get(digestHeader) != "" {
			r.hearDigests(m)
			return
		}
		var msg StatsMessage
		if json.Unmarshal(m.Data, &msg) != nil || len(msg.ID) > MaxID || msg.ID == r.cfg.ID {
			return
		}
		if msg.Ask {
			select {
			case asked <- struct{}{}:
			default:
			}
		}
		if msg.ID == "" {
			return
		}
		if msg.Bye {
			r.broker.Forget(msg.ID)
			r.heardRevs.gone(msg.ID)
			r.keepRole()
			return
		}
		counts := make([]broker.Counts, len(msg.Routers))
		for i, rs := range msg.Routers {
			counts[i] = toCounts(rs)
		}
		// By this replica's clock: how long ago it heard is what matters.
		now := time.Now()
		every := msg.Heartbeat()
		if msg.Changed {
			r.broker.MergeChanged(msg.ID, msg.At, now, every, counts)
		} else {
			r.broker.MergeTold(msg.ID, msg.At, now, every, counts)
		}
		r.heardRevs.hear(msg.ID, msg.Config, msg.Sessions, now, broker.Silence(every))
		r.keepRole()
	})
	if err != nil {
		return err
	}
	r.spawn(func(ctx context.Context) { gather(ctx.Done(), r.words.kick, relayEvery, r.tellGathered) })
	r.spawn(func(ctx context.Context) {
		defer func() { _ = sub.Unsubscribe() }()
		t := &teller{r: r, subject: subject, ask: true, every: StatsAtLeast}
		tick := time.NewTimer(0) // the first word at once, with its ask
		defer tick.Stop()
		// soon is set while a nudge waits out nudgeFloor since the last
		// word, so that a flood of failures is told at most every
		// nudgeFloor, not once per call.
		var soon <-chan time.Time
		// answer is set while an ask waits for the next tick, so that a
		// flood of asks is answered at most every statsEvery.
		answer := false
		var ticked time.Time // when it last ticked
		for {
			select {
			case <-ctx.Done():
				// Its calls are answered by now (the replica drains them
				// before it stops this).
				if data, err := json.Marshal(StatsMessage{ID: r.cfg.ID, At: time.Now(), Bye: true}); err == nil {
					_ = r.nc.Publish(subject, data)
				}
				return
			case now := <-tick.C:
				ticked = now
				r.broker.Wake()
				r.keepRole()
				changed := t.tell(now, answer, answer)
				answer = false
				wait := wordEvery(r.broker.Peers(), !r.broker.ReadsInFlight(), r.broker.RateWindow(), r.relaying(now))
				if !changed {
					wait = max(r.broker.Quiet(now, t.every-now.Sub(t.said)), statsEvery)
				}
				if r.awaitingEcho() {
					wait = min(wait, echoWait+statsEvery) // told again straight if it never comes
				}
				tick.Reset(wait)
			case <-r.broker.Stirred():
				// The fleet has calls again: tell at once, then tick; but
				// no sooner than a tick after the last, so that a stream
				// of transactions, each of which stirs, wakes it no more
				// often than it ticks.
				tick.Reset(max(statsEvery-time.Since(ticked), 0))
			case <-asked:
				// Once until the tick that answers: a flood of asks must not
				// put that tick off for ever.
				if !answer {
					answer = true
					tick.Reset(max(statsEvery-time.Since(ticked), 0))
				}
			case <-r.broker.Nudged():
				if soon != nil {
					continue
				}
				if wait := nudgeFloor - time.Since(t.at); wait > 0 {
					soon = time.After(wait)
					continue
				}
				t.tell(time.Now(), true, false)
			case now := <-soon:
				soon = nil
				t.tell(now, true, false)
			}
		}
	})
	return nil
}

// teller is what a replica last told on the stats subject.
type teller struct {
	r       *Replica
	subject string
	ask     bool          // the next word asks the others for theirs
	every   time.Duration // its heartbeat, as of the last word
	told    []broker.Counts
	conf    ConfigTold
	at      time.Time
	said    time.Time // when it last told the whole message (JSON), all its counts
	changes changes   // what its words told since
	stale   string
	taken   []TakenTold
	pinned  sessionRoutersTold
}

// tell refreshes the replica's statistics and tells its counts when they
// changed, always is set, or its heartbeat has passed since the last word;
// changed says the counts, configuration, staleness or the changes its
// view took from the bucket (Taken) changed. A change the view takes is
// told at once all the same, not at the next tick: the broker nudges
// (Nudged) when it applies one, so that `broker disable` hears within
// milliseconds which replicas hold its write. The JSON message tells all
// its counts when whole is set (an ask), with its first word and at its
// heartbeat; otherwise only those changed since the last (changes).
func (t *teller) tell(now time.Time, always, whole bool) (changed bool) {
	r := t.r
	r.broker.Refresh(now)
	counts := r.broker.Counts()
	st := r.conf.get()
	conf := ConfigTold{Revision: st.Revision, Refused: st.Refused}
	stale := r.staleness()
	taken := takenTold(r.broker.TakenSince(now.Add(-takenFor), MaxTaken))
	// A word the relay did not pass on is told again, straight.
	counted := !slices.EqualFunc(counts, t.told, broker.Counts.Equal) || r.echoOverdue(now)
	other := conf != t.conf || stale != t.stale || !slices.Equal(taken, t.taken)
	changed = counted || other
	peers := r.broker.Peers()
	every := heartbeat(peers)
	whole = whole || t.ask || now.Sub(t.said) >= min(every, t.every)
	message := whole || always || other
	if !message && !counted {
		return false
	}
	if !message {
		// Only the counts changed: a word (words.go).
		if err := r.tellWord(now, every, counts); err != nil {
			r.log.Debug("could not tell the counts", slog.Any("error", err))
			return changed
		}
		t.changes.note(counts)
		t.told, t.at = counts, now
		return changed
	}
	routers := counts
	if !whole {
		t.changes.note(counts)
		routers = t.changes.since(counts)
	}
	msg := StatsMessage{ID: r.cfg.ID, At: now, Routers: make([]RouterStats, len(routers)), Config: &conf,
		Sessions: sessionsTold(r.broker, r.handler), Stale: stale, Taken: taken, Ask: t.ask, Peers: &peers, Changed: !whole}
	if every != StatsAtLeast {
		msg.Every = every.Milliseconds()
	}
	if heard := r.broker.Heard(); !heard.IsZero() {
		msg.LogHeard = heard.UnixNano()
	}
	for i, c := range routers {
		msg.Routers[i] = fromCounts(c)
	}
	if r.broker.Relay() != r.cfg.ID {
		msg.Routers = countsOnly(msg.Routers, !whole)
	}
	if whole {
		// Sessions are only shown: they ride with the whole word.
		msg.Routers = withSessions(msg.Routers, t.pinned.get(r.broker, now))
	}
	data, err := json.Marshal(msg)
	if err != nil {
		return changed
	}
	if err := r.nc.Publish(t.subject, data); err != nil {
		r.log.Debug("could not tell the counts", slog.Any("error", err))
		return changed
	}
	t.told, t.conf, t.stale, t.taken, t.at, t.ask, t.every = counts, conf, stale, taken, now, false, every
	if whole {
		t.said = now
	}
	t.changes.told(counts)
	return changed
}
