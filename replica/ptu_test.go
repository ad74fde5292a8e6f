package replica_test

import (
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/matryer/is"
	"github.com/nats-io/nats.go"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/standin"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/replica"
)

// Issue 23's PTU end to end, as the gateway drives three replicas: four
// calls in flight to the PTU when its answer says 6 are left. That count
// already holds the four, so 6 more may go, and no more: a burst of
// calls at once over the queue group sends exactly 6 to the PTU (each
// replica its share) and the rest to tier 1. Before, the four came off
// the 6 again on every replica, and each replica then saw only its own
// new choices until the others told theirs: from 3 to 9 went.
func TestThreeReplicasSendAPTUWhatItsAnswerSaysIsLeftAndNoMore(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	rs := runReplicas(t, replica.Config{NATS: natsconn.Settings{Servers: s.ClientURL()}, Pools: []broker.Pool{poolOf("headroom", "ptu", "payg@1")},
		Policy: broker.Policy{DisabledTime: time.Minute}}, 3)
	nc := natstest.Connect(t, s)
	const ptu = "/azure/ptu/"
	for range 4 {
		is.Equal(ask(t, nc, "/azure/"), ptu) // no word of a limit yet
	}
	rs.every(t, 5*time.Second, func(b *broker.Broker) bool { return viewOf(b, ptu).InFlight == 4 }, "every replica counts the four in flight")
	// The last of the four is answered: the client has its answer, then
	// the response context goes to one replica, then the transaction to
	// all. It was sent after the other three.
	chosen := time.Now()
	for wait := 20*time.Millisecond - time.Since(chosen); wait > 0; wait = 20*time.Millisecond - time.Since(chosen) {
		<-time.After(wait)
	}
	tell(t, nc, ptu, 200)
	finish(t, nc, standin.Finished{Ingress: "/azure/", Router: ptu, Start: time.Now(), Latency: time.Millisecond, Payload: 1 << 10,
		Headers: map[string]string{"X-Ratelimit-Remaining-Requests": "6", "X-Ratelimit-Limit-Requests": "100", "X-Ratelimit-Reset-Requests": "5s"}})
	rs.every(t, 5*time.Second, func(b *broker.Broker) bool { return viewOf(b, ptu).HeadroomKnown }, "every replica heard the answer")

	got := burst(t, nc, 30)
	is.Equal(got[ptu], 6)             // what was left, to the call
	is.Equal(got["/azure/payg/"], 24) // the rest to tier 1
}

// burst makes n request contexts at once, as gecholog does for n clients,
// and counts the routers chosen.
func burst(t *testing.T, nc *nats.Conn, n int) map[string]int {
	t.Helper()
	var mu sync.Mutex
	got := map[string]int{}
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			r := "error"
			if m, err := nc.Request(replica.DefaultSubject, []byte(`{"gl_path":"/azure/"}`), 5*time.Second); err == nil {
				var out struct {
					GLPath string `json:"gl_path"`
				}
				if json.Unmarshal(m.Data, &out) == nil {
					r = out.GLPath
				}
			}
			mu.Lock()
			got[r]++
			mu.Unlock()
		})
	}
	wg.Wait()
	return got
}
