package ops_test

import (
	"context"
	"testing"
	"time"

	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/kv"
	"github.com/gecholog/broker/replica"
)

// TestAScanThroughANodeJustHealedListsWhatTheMajorityWrote: once n1's
// routes heal, n1 rejoins the bucket's stream behind the others, and a
// server may place a listing's consumer on it, which would list n1's copy
// without the majority's disable. Every listing through n1 from the heal
// on, as status makes them, lists the disable. n1 leads the stream when
// it is cut off, so that right after the heal it still answers for the
// stream as its leader, until it hears the majority's newer term.
func TestAScanThroughANodeJustHealedListsWhatTheMajorityWrote(t *testing.T) {
	p := startPartitioned(t)
	p.c.Lead(t, natstest.ConnectURL(t, p.c.Servers[1].ClientURL()), "KV_gl_broker", 0)
	var st *kv.Store
	within(t, 30*time.Second, "the bucket opened through n1", func(ctx context.Context) (err error) {
		st, err = kv.Open(ctx, natstest.JetStreamURL(t, p.c.Servers[0].ClientURL()), kv.Config{Bucket: replica.DefaultBucket, Replicas: 3})
		return err
	})
	t.Cleanup(st.Close)
	p.cut(t)
	p.c.Heal(0)
	healed := time.Now()
	var answered []time.Duration
	pace := time.NewTicker(20 * time.Millisecond) // each listing makes a consumer and deletes it
	defer pace.Stop()
	for ; len(answered) == 0 || time.Since(healed) < 3*time.Second; <-pace.C {
		if time.Since(healed) > 60*time.Second {
			t.Fatal("no listing through n1 answered within 60s of the heal")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		listed, err := st.Scan(ctx)
		cancel()
		if err != nil {
			continue // the bucket does not answer through n1 yet
		}
		answered = append(answered, time.Since(healed))
		found := false
		for _, l := range listed {
			found = found || l.Router == "/azure/gpt4/" && l.Err == nil
		}
		if !found {
			t.Fatalf("a listing through n1 %v after the heal has %d keys and not the majority's disable of /azure/gpt4/",
				time.Since(healed).Round(time.Millisecond), len(listed))
		}
	}
	t.Logf("%d listings through n1 from %v to %v after the heal, each with the majority's disable",
		len(answered), answered[0].Round(time.Millisecond), answered[len(answered)-1].Round(time.Millisecond))
}
