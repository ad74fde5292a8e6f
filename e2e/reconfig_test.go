package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/matryer/is"
	"github.com/nats-io/nats.go"

	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/kv"
)

// appliedLine is what a replica logs once it chooses by a new revision of
// the fleet's configuration: after its table is swapped.
const appliedLine = "applied a new revision of the fleet's configuration"

// removedAnswer is a request context answered with a router that a
// revision already written removes; whether that was wrong depends on
// when the call was sent, which the test judges once the load is over.
type removedAnswer struct{ router string }

func (e removedAnswer) Error() string { return "answered with removed router " + e.router }

// A rolling change under load, as an operator makes it with `broker
// config set`: three replica processes serve gateway calls while four
// revisions change the weights, add a router and remove two. No call is
// dropped or answered wrongly, no call sent after every replica applied a
// removal is answered with the removed router, the added router is
// chosen, and every replica ends on the last revision.
func TestRollingChangeUnderLoadDropsNoCallAndChoosesNoRemovedRouter(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	cs, err := kv.OpenConfig(t.Context(), natstest.JetStream(t, s), kv.ConfigBucket(bucketName), true)
	is.NoErr(err) // the configuration bucket
	// Given no pools, the first replica seeds the bucket with the
	// original pool (revision 1) and the others follow it.
	rs := startReplicas(t, s, 3)
	for _, r := range rs {
		waitRevision(t, r, 1)
	}

	const gpt4o = "/azure/gpt4o/"
	var mu sync.Mutex
	known := map[string]bool{gpt35: true, gpt4: true, dud: true, gpt4o: true}
	removed := map[string]bool{} // by a revision already written
	chosen := map[string]int{}
	check := func(m *nats.Msg) error {
		var reply struct {
			GLPath string `json:"gl_path"`
		}
		if err := json.Unmarshal(m.Data, &reply); err != nil {
			return fmt.Errorf("reply %q is not {\"gl_path\": router}", m.Data)
		}
		mu.Lock()
		defer mu.Unlock()
		chosen[reply.GLPath]++
		switch {
		case !known[reply.GLPath]:
			return fmt.Errorf("router %q is in no revision", reply.GLPath)
		case removed[reply.GLPath]:
			return removedAnswer{reply.GLPath}
		}
		return nil
	}
	load := natstest.StartLoad(t, natstest.Connect(t, s), 4, brokerTopic, askRouter, callTimeout, check)

	steps := []struct {
		what    string
		routers []kv.ConfigRouter
		removes string
	}{
		{what: "weights", routers: []kv.ConfigRouter{{Path: gpt35, Weight: 1}, {Path: gpt4, Weight: 3}, {Path: dud, Weight: 1}}},
		{what: "add " + gpt4o, routers: []kv.ConfigRouter{{Path: gpt35, Weight: 1}, {Path: gpt4, Weight: 3}, {Path: dud, Weight: 1}, {Path: gpt4o, Weight: 2}}},
		{what: "remove " + dud, routers: []kv.ConfigRouter{{Path: gpt35, Weight: 1}, {Path: gpt4, Weight: 3}, {Path: gpt4o, Weight: 2}}, removes: dud},
		{what: "remove " + gpt35 + " and even the weights", routers: []kv.ConfigRouter{{Path: gpt4, Weight: 1}, {Path: gpt4o, Weight: 1}}, removes: gpt35},
	}
	allApplied := map[string]time.Time{} // removed router → when the last replica applied its removal
	var rev uint64
	for _, step := range steps {
		if step.removes != "" {
			mu.Lock()
			removed[step.removes] = true
			mu.Unlock()
		}
		marks := make([]int, len(rs))
		for i, r := range rs {
			marks[i] = r.mark()
		}
		rev = setConfig(t, cs, step.routers)
		// When each replica applied it, by its own clock (the same host's),
		// just after the swap: a call sent later reaches it after.
		var last time.Time
		for i, r := range rs {
			l := r.waitAfter(t, marks[i], 20*time.Second, logged(appliedLine, "revision", strconv.FormatUint(rev, 10)))
			if l.at.IsZero() {
				t.Fatalf("%s: %q has no time: %s", r.id, appliedLine, l.raw)
			}
			if l.at.After(last) {
				last = l.at
			}
			waitRevision(t, r, rev)
		}
		if step.removes != "" {
			allApplied[step.removes] = last
		}
		// The new revision serves the load before the next change.
		load.WaitAnswered(t, last, 100, 30*time.Second)
		t.Logf("%s: revision %d applied by every replica %v after the first", step.what, rev, last.Sub(firstApplied(t, rs, marks, rev)))
	}
	natstest.Eventually(t, 30*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return chosen[gpt4o] > 0
	}, "the added router %s chosen", gpt4o)
	calls := load.Finish()

	failed, late, inTransit := map[string]int{}, 0, 0
	for _, c := range calls {
		var ra removedAnswer
		switch {
		case c.Err == nil:
		case errors.As(c.Err, &ra):
			if c.Start.After(allApplied[ra.router]) {
				late++
				t.Errorf("a call sent at %s was answered with %s, removed by every replica at %s",
					c.Start.Format(time.RFC3339Nano), ra.router, allApplied[ra.router].Format(time.RFC3339Nano))
			} else {
				inTransit++
			}
		default:
			failed[c.Err.Error()]++
		}
	}
	t.Logf("%d calls; answered with a removed router while the change was reaching the replicas: %d; chosen: %v", len(calls), inTransit, chosen)
	is.Equal(failed, map[string]int{}) // no call unanswered or answered wrongly
	is.Equal(late, 0)                  // no call answered with a router every replica had removed
	for _, r := range rs {
		got, _ := r.metric(t, "broker_config_revision")
		is.Equal(got, float64(rev)) // every replica ends on the last revision
	}
}

// setConfig writes the default pool over routers as `broker config set`
// does: it reads the newest revision and writes with a compare-and-set
// on it, keeping the rest of the document.
func setConfig(t *testing.T, cs *kv.ConfigStore, routers []kv.ConfigRouter) uint64 {
	t.Helper()
	l, err := cs.Latest(t.Context())
	if err != nil || l.Revision == 0 || l.Err != nil || len(l.Config.Pools) != 1 {
		t.Fatalf("the newest revision: %+v, %v; want one pool", l, err)
	}
	doc := l.Config
	doc.Pools = []kv.ConfigPool{{Ingress: ingress, Strategy: l.Config.Pools[0].Strategy, Routers: routers}}
	doc.By, doc.At, doc.Source = "e2e", time.Time{}, "TestRollingChange"
	rev, err := cs.Write(t.Context(), doc, l.Revision, &l.Config)
	if err != nil {
		t.Fatalf("write revision after %d: %v", l.Revision, err)
	}
	return rev
}

// waitRevision waits until the replica's /metrics says it runs revision
// rev of the fleet's configuration.
func waitRevision(t *testing.T, r *replica, rev uint64) {
	t.Helper()
	natstest.Eventually(t, 20*time.Second, func() bool {
		got, ok := r.metric(t, "broker_config_revision")
		return ok && got == float64(rev)
	}, "%s on revision %d", r.id, rev)
}

// firstApplied is when the first replica logged applying rev.
func firstApplied(t *testing.T, rs []*replica, marks []int, rev uint64) time.Time {
	t.Helper()
	var first time.Time
	for i, r := range rs {
		for _, l := range r.linesSince(marks[i], logged(appliedLine, "revision", strconv.FormatUint(rev, 10))) {
			if first.IsZero() || l.at.Before(first) {
				first = l.at
			}
		}
	}
	return first
}
