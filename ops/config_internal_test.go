package ops

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/kv"
)

func TestOfTwoConfigSetsAtOnceExactlyOneWinsAndTheOtherNamesTheWinner(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t, natstest.WithToken("s3cr3t-token"))
	target := Target{NATS: natsconn.Settings{Servers: s.ClientURL(), Token: "s3cr3t-token"}, Bucket: "gl_broker"}
	pools := func(router string) kv.FleetConfig {
		return kv.NewFleetConfig([]broker.Pool{{Ingress: "/azure/", Routers: []broker.Router{{Path: router, Weight: 1}}}}, broker.Policy{DisabledTime: time.Minute}, 0)
	}
	getenv := func(string) string { return "" }
	var first bytes.Buffer
	is.NoErr(SetConfig(context.Background(), target, ConfigSet{Doc: pools("/azure/a/"), File: "a.json", By: "carol"}, getenv, &first))

	// Both read revision 1 before either writes.
	var read sync.WaitGroup
	read.Add(2)
	var wg sync.WaitGroup
	var outs [2]bytes.Buffer
	var errs [2]error
	for i, who := range []string{"alice", "bob"} {
		wg.Go(func() {
			errs[i] = SetConfig(context.Background(), target, ConfigSet{Doc: pools("/azure/" + who + "/"), File: who + ".json", By: who,
				afterRead: func() { read.Done(); read.Wait() }}, getenv, &outs[i])
		})
	}
	wg.Wait()
	won, lost := 0, 1
	if errs[0] != nil {
		won, lost = 1, 0
	}
	is.NoErr(errs[won])        // one wins
	is.True(errs[lost] != nil) // and the other does not
	winner := []string{"alice", "bob"}[won]
	is.True(strings.HasPrefix(outs[won].String(), "wrote revision 2 ")) // the winner wrote revision 2
	is.Equal(outs[lost].String(), "")                                   // the loser printed nothing
	msg := errs[lost].Error()
	is.True(errors.Is(errs[lost], kv.ErrConflict)) // a conflict, as callers test for
	if !strings.HasPrefix(msg, "not written: the configuration changed since revision 1 was read: revision 2 was written at ") || !strings.Contains(msg, " by "+winner+"; ") {
		t.Fatalf("the loser is not told the revision, when and who won (%s): %s", winner, msg)
	}
	is.True(!strings.Contains(msg, "\n"))           // one line
	is.True(!strings.Contains(msg, "s3cr3t-token")) // no secret

	cs, err := kv.OpenConfig(context.Background(), natstest.JetStreamURL(t, strings.Replace(s.ClientURL(), "nats://", "nats://s3cr3t-token@", 1)), kv.ConfigBucket("gl_broker"), false)
	is.NoErr(err)
	latest, err := cs.Latest(context.Background())
	is.NoErr(err)
	is.Equal(latest.Revision, uint64(2)) // one write between them
	is.Equal(latest.Config.By, winner)   // the winner's
}
