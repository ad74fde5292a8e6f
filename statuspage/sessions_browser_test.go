package statuspage_test

import (
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/standin"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/replica"
)

func TestStatusPageShowsEachPoolsAffinityAndTheFleetsSessionCountsNeverAValue(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	pools := []broker.Pool{
		{Ingress: "/azure/", Affinity: broker.Affinity{Header: "X-Conversation-Id"}, Routers: []broker.Router{{Path: "/azure/a/", Weight: 1}, {Path: "/azure/b/", Weight: 1}}},
		{Ingress: "/openai/", Routers: []broker.Router{{Path: "/openai/a/", Weight: 1}}},
	}
	fl := startFleet(t, s.ClientURL(), replica.Config{Pools: pools, Policy: broker.Policy{DisabledTime: time.Minute}}, 2)
	const conversation = "conv-SECRET-9"
	keyed := `{"gl_path":"/azure/","ingress_headers":{"X-Conversation-Id":["` + conversation + `"]}}`
	// Calls as gecholog makes them, over the queue group of both replicas.
	requestTo(t, s.ClientURL(), keyed, keyed, keyed, keyed, `{"gl_path":"/azure/"}`, `{"gl_path":"/azure/","ingress_headers":{"X-Conversation-Id":[""]}}`, `{"gl_path":"/openai/"}`)

	ctx := startBrowser(t, 1280, 800)
	open(t, ctx, fl.addrs[0])
	// The fleet's counts add up what each replica tells.
	waitFor(t, ctx, 5*time.Second, `document.getElementById("sessions").textContent === "4 keyed (0 spilled) · 2 without a key (2 replicas)"`)
	head := eval[string](t, ctx, `document.querySelector('tbody[data-ingress="/azure/"] .pool-head').innerText`)
	says(t, "the pool's heading", head, "session affinity on header X-Conversation-Id, load factor 2")
	is.Equal(eval[int](t, ctx, `document.querySelectorAll('tbody[data-ingress="/openai/"] .affinity').length`), 0) // a pool without affinity says none
	is.True(eval[bool](t, ctx, `!document.getElementById("sessions").parentElement.hidden`))                       // shown where a pool has affinity
	perReplica := eval[[]string](t, ctx, `[...document.querySelectorAll("tr[data-replica] td.sessions")].map(td => td.textContent)`)
	is.Equal(len(perReplica), 2) // each replica's own counts
	for _, c := range perReplica {
		is.True(strings.HasSuffix(c, " without a key")) // told by each replica
	}
	screenshot(t, ctx, "sessions", "-sessions")
	if text := pageText(ctx); strings.Contains(text, conversation) {
		t.Fatalf("the page shows the header value: %s", text)
	}
}

// TestStatusPageShowsTheSessionsPinnedPerRouterAndTheirMoves publishes,
// as gecholog's logger does, calls of three sessions of a pool with
// "session" affinity, one of which moves: the page shows, per router,
// the sessions pinned there and those that moved in and out.
func TestStatusPageShowsTheSessionsPinnedPerRouterAndTheirMoves(t *testing.T) {
	s := natstest.Start(t)
	pools := []broker.Pool{
		{Ingress: "/azure/", Affinity: broker.Affinity{Session: true}, Routers: []broker.Router{
			{Path: "/azure/a/", Weight: 1}, {Path: "/azure/b/", Weight: 1}, {Path: "/azure/c/", Weight: 1}}},
		{Ingress: "/openai/", Routers: []broker.Router{{Path: "/openai/a/", Weight: 1}}},
	}
	fl := startFleet(t, s.ClientURL(), replica.Config{Pools: pools, Policy: broker.Policy{DisabledTime: time.Minute}}, 1)
	nc := natstest.Connect(t, s)
	for _, f := range []standin.Finished{
		{Ingress: "/azure/", Router: "/azure/a/", Session: "AAA00001_1696681410696216001_1_0"},
		{Ingress: "/azure/", Router: "/azure/a/", Session: "AAA00001_1696681410696216002_2_0"},
		{Ingress: "/azure/", Router: "/azure/b/", Session: "AAA00001_1696681410696216003_3_0"},
		{Ingress: "/azure/", Router: "/azure/b/", Session: "AAA00001_1696681410696216001_1_1"}, // the first session moves from a to b
	} {
		if err := nc.Publish(replica.DefaultLoggerSubject, standin.Transaction(f)); err != nil {
			t.Fatal(err)
		}
	}
	ctx := startBrowser(t, 1280, 800)
	open(t, ctx, fl.addrs[0])
	cell := func(router string) string {
		return `document.querySelector('tr[data-router="` + router + `"] td[data-label="sessions"]').textContent`
	}
	waitFor(t, ctx, 5*time.Second, cell("/azure/b/")+` === "2 pinned · 1 in · 0 out"`)
	says(t, "/azure/a/'s sessions", eval[string](t, ctx, cell("/azure/a/")), "1 pinned · 0 in · 1 out")
	says(t, "/azure/c/'s sessions", eval[string](t, ctx, cell("/azure/c/")), "0 pinned · 0 in · 0 out")
	says(t, "/openai/a/'s sessions", eval[string](t, ctx, cell("/openai/a/")), "—") // a pool that remembers no session
	screenshot(t, ctx, "pinned", "-pinned")
}
