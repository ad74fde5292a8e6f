package kv

import (
	"context"
	"errors"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
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
var gaveUp = regexp.MustCompile(`stream KV_silent: no member answered (1 direct get|([2-9]|1[0-9])[0-9]* direct gets) in [0-9.]+m?s`)

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

func TestAReadWithoutADeadlineEndsAfterTheDefaultOne(t *testing.T) {
	s := natstest.Start(t)
	silent(t, s, "KV_silent")
	nc := natstest.Connect(t, s)

	start := time.Now()
	ended := make(chan error, 1)
	go func() {
		_, err := lastMsg(context.Background(), nc, "KV_silent", "$KV.silent.k")
		ended <- err
	}()
	var err error
	select {
	case err = <-ended:
	case <-time.After(readTimeout + time.Second):
		t.Fatalf("a read without a deadline still waits after %v, want it ended after %v", time.Since(start), readTimeout)
	}
	took := time.Since(start)

	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want one that is context.DeadlineExceeded", err)
	}
	if !gaveUp.MatchString(err.Error()) {
		t.Errorf("err = %q, want it to match %q", err, gaveUp)
	}
	if !strings.Contains(err.Error(), "without a deadline") {
		t.Errorf("err = %q, want it to say the read had no deadline of its own", err)
	}
	if took < readTimeout {
		t.Errorf("the read ended after %v, before the default deadline %v", took, readTimeout)
	}
}

// directBucket is bucket "health" on s, with "k" put, and a proxy to s
// that holds back the first direct get of the bucket a client sends
// through it, so that request is never answered unless released.
func directBucket(t *testing.T, s *server.Server) (jetstream.JetStream, *natstest.Proxy) {
	t.Helper()
	js := natstest.JetStream(t, s)
	b, err := js.CreateKeyValue(context.Background(), jetstream.KeyValueConfig{Bucket: "health"})
	if err != nil {
		t.Fatalf("create bucket: %v", err)
	}
	if _, err := b.Put(context.Background(), "k", []byte("v")); err != nil {
		t.Fatalf("put: %v", err)
	}
	p := natstest.StartProxy(t, s.ClientURL())
	var held atomic.Bool
	p.Hold(func(subject string) bool {
		return strings.HasPrefix(subject, directGets) && held.CompareAndSwap(false, true)
	})
	return js, p
}

const directGets = "$JS.API.DIRECT.GET.KV_health."

func TestAReadTakesAHedgesAnswerWhenTheFirstGetIsNeverAnswered(t *testing.T) {
	s := natstest.Start(t)
	_, p := directBucket(t, s)
	nc := natstest.ConnectURL(t, p.ClientURL())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	m, err := lastMsg(ctx, nc, "KV_health", "$KV.health.k")

	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if string(m.Data) != "v" {
		t.Errorf("read %q, want %q", m.Data, "v")
	}
	if n, _ := p.Holding(directGets); n != 1 {
		t.Errorf("%d connections hold a direct get, want 1: the first request, never answered", n)
	}
}

// TestAnErrorEndsItsRequestNotTheReadWhileAnotherMayBeAnswered: "no
// responders" says only that no member took direct gets when that request
// was published (one catching up, a stream updated, interest not yet
// carried over a route); a request published before it reached a member
// and may still be answered.
func TestAnErrorEndsItsRequestNotTheReadWhileAnotherMayBeAnswered(t *testing.T) {
	s := natstest.Start(t)
	js, p := directBucket(t, s)
	answered := make(chan struct{})
	var once sync.Once
	p.Deafen(func(subject string) bool {
		if strings.HasPrefix(subject, nats.InboxPrefix) {
			once.Do(func() { close(answered) })
		}
		return false
	})
	direct := func(allow bool) {
		t.Helper()
		st, err := js.Stream(context.Background(), "KV_health")
		if err != nil {
			t.Fatalf("stream: %v", err)
		}
		cfg := st.CachedInfo().Config
		cfg.AllowDirect = allow
		if _, err := js.UpdateStream(context.Background(), cfg); err != nil {
			t.Fatalf("allow direct %v: %v", allow, err)
		}
		natstest.Eventually(t, 10*time.Second, func() bool { return natstest.AnswersDirectGets(s, "KV_health") == allow }, "direct gets answered: %v", allow)
	}
	direct(false) // the first request is held at the proxy; the next hears "no responders"
	nc := natstest.ConnectURL(t, p.ClientURL())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type read struct {
		m   *jetstream.RawStreamMsg
		err error
	}
	done := make(chan read, 1)
	go func() {
		m, err := lastMsg(ctx, nc, "KV_health", "$KV.health.k")
		done <- read{m, err}
	}()
	select {
	case <-answered:
	case <-ctx.Done():
		t.Fatal("no request of the read was answered")
	}
	direct(true)
	p.Release()

	r := <-done
	if r.err != nil {
		t.Fatalf("read: %v", r.err)
	}
	if string(r.m.Data) != "v" {
		t.Errorf("read %q, want %q", r.m.Data, "v")
	}
}
