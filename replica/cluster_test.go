package replica_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/internal/testutil/nodeloss"
)

// TestEveryReplicaAgreesWithinASecondWhicheverNodeIsLost loses one node of
// a three-node cluster of nats-server processes, with SIGKILL, while
// failure reports reach three replicas before and after the loss: the
// JetStream meta leader (no watcher can be made until a new one is
// elected), the bucket's stream leader (no write can land until then), or
// a node holding neither, preferably the watchers' consumers. Every replica
// must avoid each reported router within a second of its report, keep the
// disable made before the loss, answer again within a second (the bench
// measures how much less), and every disable lands in the bucket once the
// cluster has its leaders back. With DISABLED_TIME shorter than an
// election (3 s), no disable is lost either.
//
// The bench runs each case 20 times: go run ./cmd/broker-bench -mode nodeloss
func TestEveryReplicaAgreesWithinASecondWhicheverNodeIsLost(t *testing.T) {
	bin := natstest.NATS(t)
	for _, tc := range []struct {
		victim   nodeloss.Victim
		disabled time.Duration
	}{
		{nodeloss.MetaLeader, time.Minute},
		{nodeloss.StreamLeader, time.Minute},
		{nodeloss.Neither, time.Minute},
		{nodeloss.StreamLeader, 3 * time.Second},
	} {
		t.Run(fmt.Sprintf("%s, DISABLED_TIME %v", tc.victim, tc.disabled), func(t *testing.T) {
			is := is.New(t)
			logs := map[string]*syncBuffer{}
			for i := range 3 {
				logs[fmt.Sprintf("replica-%d", i+1)] = &syncBuffer{}
			}
			t.Cleanup(func() {
				if t.Failed() {
					for id, l := range logs {
						t.Logf("%s logged:\n%s", id, l.String())
					}
				}
			})
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			res, err := nodeloss.Run(ctx, nodeloss.Options{
				Server: bin, Victim: tc.victim, InFlight: true, DisabledTime: tc.disabled,
				Logger: func(id string) *slog.Logger { return slog.New(slog.NewJSONHandler(logs[id], nil)) },
			})
			is.NoErr(err)
			t.Logf("lost %s (%s): %d reports answered, %d unanswered; agreement max %v; replicas on it answered again after %v",
				res.Lost, res.Roles, res.Reported, res.Unanswered, slices.Max(append(res.Agreement, 0)), res.Answering)
			is.True(res.Reported >= 10)                                  // reports before and after the loss were answered
			is.Equal(res.NotAgreed, 0)                                   // no disable lost to the election
			is.True(slices.Max(append(res.Agreement, 0)) <= time.Second) // every replica agreed within a second
			is.True(slices.Max(append(res.Answering, 0)) <= time.Second) // and answered again
			is.Equal(res.NotLanded, 0)                                   // every disable landed once the leaders were back
		})
	}
}
