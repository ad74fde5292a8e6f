package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/internal/testutil/natstest"
)

// One run of -mode partition: a fresh cluster and fleet, one node cut off
// for the partition's time, healed, and what each side saw.

// partitionCase is where the cut falls.
type partitionCase struct {
	leader bool // the cut-off node leads the bucket's stream
	// entire cuts the node's clients off too: the replica on it loses its
	// link, while gecholog beside the node still reaches it.
	entire bool
}

// key is the case's name for -partition-cases.
func (pc partitionCase) key() string {
	k := "follower"
	if pc.leader {
		k = "leader"
	}
	if pc.entire {
		k += "+replica"
	}
	return k
}

func (pc partitionCase) String() string {
	who := "a follower"
	if pc.leader {
		who = "the stream leader"
	}
	what := "routes"
	if pc.entire {
		what = "routes+replica"
	}
	return who + ", " + what
}

// partitionCases are every case, in the order the report lists them.
var partitionCases = []partitionCase{{false, false}, {true, false}, {false, true}, {true, true}}

// never marks a time not reached within the run.
const never = time.Duration(-1)

// partitionResult is one run.
type partitionResult struct {
	stale, moved, elected, routesShut time.Duration // from the cut; never: not within the partition
	heldAtHeal                        bool          // every replica held the majority's disable before the heal
	agreed                            time.Duration // from the heal until every replica held it; 0 when held before
	copies                            time.Duration // from the heal until the nodes' copies of the bucket agree
	calls                             [2][2]int     // [cut side, majority][sent, lost] during the partition
	reports                           [2][2]int     // the response contexts', likewise
	afterHeal                         [2]int        // calls and reports sent, lost, in the 2 s after the heal
	cutReport                         string        // the failure reported on the cut side: where it landed
	writesLost                        int           // answered disables not in the bucket 15 s after the heal
	idleRouteBytes, idleRoutePings    float64       // per second, before the cut
	routeConns                        int
	majorityMoves                     int // the other replicas' moves during the partition
}

const (
	partitionRouter   = "/azure/gpt4/"         // disabled on the majority during the partition
	cutSideRouter     = "/azure/dud/"          // reported failing on the cut side
	partitionCallWait = 500 * time.Millisecond // a call unanswered this long counts as lost
	healWait          = 15 * time.Second
)

// partitionRun runs one case on settings rs with the broker binary bin.
func (b *bench) partitionRun(ctx context.Context, bin string, pc partitionCase, rs routeSettings) (res partitionResult, err error) {
	var opts []natstest.Option
	if rs.apply != nil {
		opts = append(opts, rs.apply)
	}
	c, err := natstest.NewPartitionable(3, opts...)
	if err != nil {
		return res, fmt.Errorf("cluster: %w", err)
	}
	up := time.Now()
	defer c.Close()
	stream := "KV_" + b.bucket
	// A replica is given its node's link, which a cut of the node's
	// clients stalls, and learns the other nodes' links from the cluster,
	// as one given a single URL does; or it is given every node's, as
	// docs/cluster.md asks, and nats.go picks one. gecholog beside each node
	// reaches it directly.
	var procs []*brokerProc
	defer func() {
		for _, p := range procs {
			if p != nil {
				p.stopWithin(10 * time.Second)
			}
		}
	}()
	spawn := func(i int) (*brokerProc, error) {
		url := c.LinkURL(i)
		if b.o.partitionGiven == "all" {
			url = strings.Join([]string{c.LinkURL(i), c.LinkURL((i + 1) % 3), c.LinkURL((i + 2) % 3)}, ",")
		}
		// A disable outlasts the run: one that expired is no write lost.
		disabled := (b.o.partitionTime + healWait + time.Minute).Minutes()
		p, err := b.spawnOn(bin, fmt.Sprintf("bench-r%d", i+1), url,
			"BROKER_CONFIG_SOURCE=local", "BROKER_KV_REPLICAS=3", fmt.Sprintf("DISABLED_TIME=%.2f", disabled))
		if err == nil {
			err = p.waitServing(ctx)
		}
		return p, err
	}
	for i := range c.Servers {
		p, err := spawn(i)
		if p != nil {
			procs = append(procs, p)
		}
		if err != nil {
			return res, err
		}
	}
	gws := make([]*nats.Conn, 3) // gecholog beside each node
	for i, s := range c.Servers {
		if gws[i], err = nats.Connect(s.ClientURL(), nats.Name("bench gateway")); err != nil {
			return res, err
		}
		defer gws[i].Close()
		if err := waitAnswered(ctx, gws[i], b.subject); err != nil {
			return res, fmt.Errorf("n%d: %w", i+1, err)
		}
	}
	k, err := placeLeader(ctx, c.Servers, gws[0], stream, pc.leader)
	if err != nil {
		return res, err
	}
	// The replica the cut strands: one on node k. Given every node, a
	// replica is on one nats.go chose; start others until one is on k.
	r := -1
	for try := 0; r < 0; try++ {
		for i, p := range procs {
			if p.servedOn() == c.LinkURL(k) {
				r = i
			}
		}
		if r >= 0 {
			break
		}
		if try == 20 {
			return res, fmt.Errorf("no replica on n%d in 20 starts", k+1)
		}
		i := try % len(procs)
		procs[i].stopWithin(10 * time.Second)
		if procs[i], err = spawn(i); err != nil {
			return res, err
		}
	}
	m := (k + 1) % 3 // a node of the majority
	for _, s := range c.Servers {
		res.routeConns += s.NumRoutes() // each counted at both ends
	}
	res.routeConns /= 2
	// Past each route's first PING, 1 s after it connects: the window
	// sees the steady pings only.
	if !pause(ctx, time.Until(up.Add(2*time.Second))) {
		return res, ctx.Err()
	}
	bytes0, pings0 := c.RouteBytes()
	if !pause(ctx, 4*time.Second) { // the routes' idle traffic: pings, the stream's heartbeats
		return res, ctx.Err()
	}
	bytes1, pings1 := c.RouteBytes()
	res.idleRouteBytes, res.idleRoutePings = float64(bytes1-bytes0)/4, float64(pings1-pings0)/4

	tr := startTraffic(gws, k, b.subject)
	defer tr.stop()
	if !pause(ctx, 500*time.Millisecond) {
		return res, ctx.Err()
	}
	// The majority's view of the bucket, opened while it has a leader.
	majority, closeMajority, err := majorityKV(ctx, c.Servers[m], b.bucket)
	if err != nil {
		return res, err
	}
	defer closeMajority()
	from := c.LinkURL(k)
	c.Cut(k)
	if pc.entire {
		c.CutClients(k)
	}
	cut := time.Now()
	tr.mark(cut, time.Time{})

	var cutAnswered, majorityAnswered bool
	var side sync.WaitGroup
	side.Go(func() {
		// gecholog on the cut side reports a failure. Its node sends it to
		// a replica at random, the one beside it or one behind a stalled
		// route; the bench tries until one answers, within a second, to
		// follow the write of an answered report.
		if !pause(ctx, 300*time.Millisecond) {
			return
		}
		for range 10 {
			if cutAnswered = report(gws[k], b.subject, cutSideRouter, 502, 100*time.Millisecond) == nil; cutAnswered {
				return
			}
		}
	})
	side.Go(func() { // and gecholog on the majority's, a second in, likewise
		if !pause(ctx, time.Second) {
			return
		}
		// Up to 10 s of tries: while the majority elects a leader its
		// replicas move, and a third of its calls go into the stalled
		// routes (ten tries failed once in the bench's test).
		for range 50 {
			if majorityAnswered = report(gws[m], b.subject, partitionRouter, 502, 200*time.Millisecond) == nil; majorityAnswered {
				return
			}
		}
	})
	res.elected, res.routesShut = never, never
	if !pc.leader {
		res.elected = 0 // the leader never left the majority
	}
	for end := cut.Add(b.o.partitionTime); time.Now().Before(end); {
		if res.elected == never && (c.Servers[m].JetStreamIsStreamLeader("$G", stream) || c.Servers[3-k-m].JetStreamIsStreamLeader("$G", stream)) {
			res.elected = time.Since(cut)
		}
		if res.routesShut == never && c.Servers[k].NumRoutes() == 0 {
			res.routesShut = time.Since(cut)
		}
		if !pause(ctx, 10*time.Millisecond) {
			return res, ctx.Err()
		}
	}
	side.Wait()
	for i, p := range procs {
		if i != r { // a second replica nats.go put on node k moves as r does
			res.majorityMoves += p.movesFrom(c.LinkURL(k))
		}
	}
	at, ok := procs[r].saidAt(staleLine, cut)
	res.stale = sinceOr(cut, at, ok)
	at, ok = procs[r].reconnectedAway(from, cut)
	res.moved = sinceOr(cut, at, ok)
	landedBefore := majority.holds(ctx, cutSideRouter)
	heldAll := func() (time.Time, bool) {
		var last time.Time
		for _, p := range procs {
			at, ok := p.disabledAt(partitionRouter)
			if !ok {
				return last, false
			}
			if at.After(last) {
				last = at
			}
		}
		return last, true
	}
	_, res.heldAtHeal = heldAll()

	c.Heal(k)
	if pc.entire {
		c.HealClients(k)
	}
	heal := time.Now()
	tr.mark(cut, heal)
	res.agreed, res.copies = never, never
	deadline := heal.Add(healWait)
	for time.Now().Before(deadline) {
		if at, ok := heldAll(); ok && res.agreed == never {
			res.agreed = max(at.Sub(heal), 0)
		}
		if res.copies == never && copiesAgree(c.Servers, stream) {
			res.copies = time.Since(heal)
		}
		if res.agreed != never && res.copies != never && time.Since(heal) > 2*time.Second {
			break
		}
		if !pause(ctx, 10*time.Millisecond) {
			return res, ctx.Err()
		}
	}
	tr.stop()
	res.calls, res.reports, res.afterHeal = tr.counts()
	switch {
	case !cutAnswered:
		res.cutReport = "unanswered"
	case landedBefore:
		res.cutReport = "before heal"
	case majority.holdsBy(ctx, cutSideRouter, deadline):
		res.cutReport = "after heal"
	default:
		res.cutReport = "LOST"
		res.writesLost++
	}
	if majorityAnswered && !majority.holdsBy(ctx, partitionRouter, deadline) {
		res.writesLost++
	}
	if !majorityAnswered {
		return res, errors.New("the majority's failure report was not answered")
	}
	return res, nil
}

// staleLine is the warning a replica logs when it says its view may be
// stale, at the check that sets broker_bucket_reachable 0 and /readyz 503.
const staleLine = "the router health bucket does not answer: serving with what this replica knows and the failures it sees itself, which it writes once the bucket answers"

func sinceOr(from time.Time, at time.Time, ok bool) time.Duration {
	if !ok || at.Before(from) {
		return never
	}
	return at.Sub(from)
}

// placeLeader moves the bucket's stream leader off the meta leader and
// returns the node to cut: the stream leader, or a node that leads
// neither.
func placeLeader(ctx context.Context, servers []*server.Server, nc *nats.Conn, stream string, leader bool) (int, error) {
	find := func() (meta, lead int) {
		meta, lead = -1, -1
		for i, s := range servers {
			if s.JetStreamIsLeader() {
				meta = i
			}
			if s.JetStreamIsStreamLeader("$G", stream) {
				lead = i
			}
		}
		return meta, lead
	}
	for range 10 {
		meta, lead := find()
		if meta >= 0 && lead >= 0 && meta != lead {
			if leader {
				return lead, nil
			}
			return 3 - meta - lead, nil
		}
		if meta >= 0 && lead >= 0 {
			if _, err := nc.Request("$JS.API.STREAM.LEADER.STEPDOWN."+stream, nil, 2*time.Second); err != nil {
				return -1, fmt.Errorf("stream leader step-down: %w", err)
			}
		}
		for range 100 { // a new leader within 5 s
			if m, l := find(); m >= 0 && l >= 0 && l != lead {
				break
			}
			if !pause(ctx, 50*time.Millisecond) {
				return -1, ctx.Err()
			}
		}
	}
	return -1, errors.New("could not lead the bucket's stream off the meta leader in 10 step-downs")
}

// bucketView reads the bucket through one node.
type bucketView struct{ kv jetstream.KeyValue }

// holdsBy waits until router has a record in the bucket, or deadline
// has passed.
func (v bucketView) holdsBy(ctx context.Context, router string, deadline time.Time) bool {
	for range 1000 { // a read takes at least 100 ms: past any deadline the run sets
		if v.holds(ctx, router) {
			return true
		}
		if time.Now().After(deadline) || !pause(ctx, 100*time.Millisecond) {
			return false
		}
	}
	return false
}

// majorityKV opens bucket through s on a connection of its own, closed by
// the function it returns.
func majorityKV(ctx context.Context, s *server.Server, bucket string) (bucketView, func(), error) {
	nc, err := nats.Connect(s.ClientURL(), nats.Name("bench admin"))
	if err != nil {
		return bucketView{}, nil, err
	}
	js, err := jetstream.New(nc)
	if err == nil {
		var kv jetstream.KeyValue
		kv, err = js.KeyValue(ctx, bucket)
		if err == nil {
			return bucketView{kv}, nc.Close, nil
		}
	}
	nc.Close()
	return bucketView{}, nil, fmt.Errorf("bucket %s through %s: %w", bucket, s.Name(), err)
}

// holds reports whether router has a record in the bucket. A read is
// asked again when it goes unanswered: the node hands a direct get to any
// of the stream's members, the cut-off one too.
func (v bucketView) holds(ctx context.Context, router string) bool {
	for range 5 {
		gctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		_, err := v.kv.Get(gctx, router)
		cancel()
		switch {
		case err == nil:
			return true
		case errors.Is(err, jetstream.ErrKeyNotFound), ctx.Err() != nil:
			return false
		}
	}
	return false
}

// copiesAgree reports whether every node holds the stream with the same
// last sequence.
func copiesAgree(servers []*server.Server, stream string) bool {
	var last uint64
	for i, s := range servers {
		a, err := s.JszAccount(&server.JSzOptions{Account: "$G", Streams: true})
		if err != nil {
			return false
		}
		found := false
		for _, sd := range a.Streams {
			if sd.Name == stream {
				found = true
				if i > 0 && sd.State.LastSeq != last {
					return false
				}
				last = sd.State.LastSeq
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// report sends a response context with status for router, as gecholog's
// response processor does.
func report(nc *nats.Conn, subject, router string, status int, wait time.Duration) error {
	_, err := nc.Request(subject, fmt.Appendf(nil, `{"gl_path":%q,"egress_status_code":%d}`, router, status), wait)
	return err
}

// waitAnswered waits up to 10 s for a request context through nc to be
// answered: the replicas' subscriptions have reached its node.
func waitAnswered(ctx context.Context, nc *nats.Conn, subject string) error {
	for range 100 {
		if _, err := nc.Request(subject, []byte(`{"gl_path":"/azure/"}`), 100*time.Millisecond); err == nil {
			return nil
		}
		if !pause(ctx, 100*time.Millisecond) {
			return ctx.Err()
		}
	}
	return errors.New("no replica answered within 10s")
}

// pause waits d, or less when ctx ends; false then.
func pause(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
