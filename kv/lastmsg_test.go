package kv

import (
	"context"
	"errors"
	"regexp"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/internal/testutil/natstest"
)

// silent makes every direct get of stream heard and never answered, as by
// a member cut off behind a stalled route: a subscriber on s swallows
// them, so the server sees interest and says no "no responders".
func silent(t *testing.T, s *server.Server, stream string) {
	t.Helper()
	nc := natstest.Connect(t, s)
	if _, err := nc.Subscribe(jetstream.DefaultAPIPrefix+"DIRECT.GET."+stream+".>", func(*nats.Msg) {}); err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatalf("flush: %v", err)
	}
}

// gaveUp matches the error of a read no member answered: it names the
// stream, how many direct gets it sent and for how long.
var gaveUp = regexp.MustCompile(`stream KV_silent: no member answered [1-9][0-9]* direct gets in [0-9.]+m?s`)

func TestAReadNoMemberAnswersEndsAtTheCallersDeadlineNamingTheStream(t *testing.T) {
	s := natstest.Start(t)
	silent(t, s, "KV_silent")
	nc := natstest.Connect(t, s)
	const wait = time.Second
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()

	start := time.Now()
	_, err := lastMsg(ctx, nc, "KV_silent", "$KV.silent.k")
	took := time.Since(start)

	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want one that is context.DeadlineExceeded", err)
	}
	if !gaveUp.MatchString(err.Error()) {
		t.Errorf("err = %q, want it to match %q", err, gaveUp)
	}
	if took < wait || took > wait+time.Second {
		t.Errorf("the read ended after %v, want between the caller's deadline (%v) and a second later", took, wait)
	}
}
