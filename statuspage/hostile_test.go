package statuspage_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/ops"
	"github.com/gecholog/broker/replica"
)

// What a hostile or careless writer of the bucket can put there, and what
// the replicas and their pages make of it.

func TestReplicasKeepServingAndFollowingTheBucketPastAKeyTheKVAPIRefuses(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	js := natstest.JetStream(t, s)
	openBucket(t, js)
	// One key there when the replicas load the bucket, one written while
	// they watch it.
	record := `{"v":1,"router":"x","reason":"r","at":"2026-01-01T00:00:00Z","until":"2099-01-01T00:00:00Z","by":"mallory"}`
	rawKey(t, js, "<svg/onload=alert(6)>", record)
	rawKey(t, js, "junk(1)", "x")
	base := replica.Config{}
	fl := startFleet(t, s.ClientURL(), base, 2)
	rawKey(t, js, "evil\u202ett", record)
	rawKey(t, js, "junk(2)", "x")
	replicas, addrs := fl.f.Replicas, fl.addrs

	// Every replica takes calls and follows the other keys' changes.
	requestTo(t, s.ClientURL(), `{"gl_path":"/azure/"}`, `{"gl_path":"/azure/"}`)
	tgt := target(s.ClientURL(), base)
	is.NoErr(ops.DisableRouter(context.Background(), tgt, ops.Disable{Router: "/azure/gpt4/", Reason: "quota exhausted", By: "alice"}, opsEnv, io.Discard))
	natstest.Eventually(t, 5*time.Second, func() bool {
		for _, r := range replicas {
			if r.Broker().Phase("/azure/gpt4/") != broker.Manual {
				return false
			}
		}
		return true
	}, "the disable on every replica")
	for _, addr := range addrs {
		// The watcher brings the key written after the start in order,
		// but the news may have brought the disable before it.
		natstest.Eventually(t, 5*time.Second, func() bool { return len(snapshot(t, addr).UnknownRouters) == 2 }, "both keys heard")
		snap := snapshot(t, addr) // the page answers
		is.Equal(findRouter(snap, "/azure/gpt4/").State, "manual")
		is.Equal(snap.UnknownRouters, []string{"<svg/onload=alert(6)>", `evil\u202ett`}) // named, escaped
	}
	is.NoErr(ops.EnableRouter(context.Background(), tgt, "/azure/gpt4/", io.Discard))
	natstest.Eventually(t, 5*time.Second, func() bool {
		for _, r := range replicas {
			if r.Broker().Phase("/azure/gpt4/") != broker.Enabled {
				return false
			}
		}
		return true
	}, "the enable on every replica")
	requestTo(t, s.ClientURL(), `{"gl_path":"/azure/"}`)
}

func TestStatusPageShowsControlAndBidiCharactersEscaped(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	js := natstest.JetStream(t, s)
	st := openBucket(t, js)
	_, err := st.Create(context.Background(), broker.Record{Router: "/azure/dud/", Status: 502, Reason: "quota\u202e ko \u009b31m\u2066\u200b!",
		At: time.Now(), Until: time.Now().Add(time.Hour), By: "alice\u009b\u2067"})
	is.NoErr(err)
	rawKey(t, js, "evil\u202ett", `{"v":1,"router":"x","reason":"r","at":"2026-01-01T00:00:00Z","by":"mallory"}`)
	fl := startFleet(t, s.ClientURL(), replica.Config{}, 1)

	// /status.json carries nothing raw.
	resp, body := get(t, "http://"+fl.addrs[0]+"/status.json")
	is.Equal(resp.StatusCode, http.StatusOK)
	for _, raw := range []string{"\u202e", "\u009b", "\u2066", "\u2067", "\u200b"} {
		is.True(!strings.Contains(body, raw)) // not in the snapshot
	}

	ctx := startBrowser(t, 1280, 800)
	open(t, ctx, fl.addrs[0])
	waitFor(t, ctx, 5*time.Second, `document.querySelector(`+row("/azure/", "/azure/dud/")+`).dataset.state === "disabled"`)
	dud := rowText(t, ctx, "/azure/", "/azure/dud/")
	is.True(strings.Contains(dud, `quota\u202e ko \u009b31m\u2066\u200b!`)) // shown escaped, visibly
	says(t, "the row of /azure/dud/", dud, `alice\u009b\u2067`)             // the writer's name, escaped too
	is.Equal(eval[[]string](t, ctx, `[...document.querySelectorAll("[data-unknown]")].map(e => e.textContent)`), []string{`evil\u202ett`})
	text := pageText(ctx)
	for _, raw := range []string{"\u202e", "\u009b", "\u2066", "\u2067", "\u200b"} {
		is.True(!strings.Contains(text, raw)) // nothing on the page raw
	}
	screenshot(t, ctx, "escaped", "")

	// With nothing changing, the replica sends only its clock, and the
	// page still knows it is live.
	eval[float64](t, ctx, `window.quietFrom = performance.now()`)
	waitFor(t, ctx, 10*time.Second, `performance.now() - window.quietFrom > 3500`)
	is.Equal(eval[string](t, ctx, `document.getElementById("updated").textContent`), "live")
	is.True(eval[bool](t, ctx, `document.getElementById("link").hidden`)) // no "No word from the replica"
}

func TestAHugeReasonCostsAnOpenPageABoundedEvent(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	js := natstest.JetStream(t, s)
	st := openBucket(t, js)
	_, err := st.Create(context.Background(), broker.Record{Router: "/azure/gpt4/", Reason: strings.Repeat("r", 100_000),
		At: time.Now(), Until: time.Now().Add(time.Hour), By: strings.Repeat("b", 100_000), Manual: true})
	is.NoErr(err)
	// And many long names of routers no pool has.
	for i := range 40 {
		_, err := st.Create(context.Background(), broker.Record{Router: fmt.Sprintf("/other/%03d/%s/", i, strings.Repeat("n", 2000)),
			Reason: "r", At: time.Now(), By: "x", Manual: true})
		is.NoErr(err)
	}
	fl := startFleet(t, s.ClientURL(), replica.Config{}, 1)
	natstest.Eventually(t, 5*time.Second, func() bool {
		return len(snapshot(t, fl.addrs[0]).UnknownRouters) > 0
	}, "the unknown routers heard")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	evs := events(t, ctx, fl.addrs[0])
	<-evs // retry: 1000
	first := <-evs
	t.Logf("the first event: %d bytes", len(first))
	is.True(strings.HasPrefix(first, "data: "))                                       // an event of data
	is.True(len(first) < 32<<10)                                                      // bounded, though the record is 200 KB
	is.True(strings.Contains(first, strings.Repeat("r", 200)+"… [99800 more bytes]")) // the reason cut, saying so
	is.True(strings.Contains(first, `"unknown_more":20`))                             // 20 named, the rest counted
	// Nothing changes: what comes next is the replica's clock alone.
	deadline := time.After(10 * time.Second)
	for n := 0; n < 2; {
		select {
		case ev := <-evs:
			if strings.HasPrefix(ev, "event: at\n") {
				t.Logf("a heartbeat: %q", ev)
				is.True(len(ev) < 100) // not the snapshot again
				n++
			}
		case <-deadline:
			t.Fatal("no heartbeat within 10s")
		}
	}
}
