package statuspage_test

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/kv"
	"github.com/gecholog/broker/ops"
	"github.com/gecholog/broker/replica"
)

// The browser tests run the page in a real headless Chromium against
// replicas running in this process on an embedded NATS server.

// live is how soon a change written through NATS must show on an open page.
const live = time.Second

func TestStatusPageListsTheRoutersAndFollowsADisableAndAnEnableWithoutReload(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	base := replica.Config{}
	fl := startFleet(t, s.ClientURL(), base, 1)
	ctx := startBrowser(t, 1280, 800)
	open(t, ctx, fl.addrs[0])

	// The page loads and lists the routers.
	routers := eval[[]string](t, ctx, `[...document.querySelectorAll("tr[data-router]")].map(r => r.dataset.router + " " + r.dataset.state)`)
	is.Equal(routers, []string{"/azure/gpt35turbo/ enabled", "/azure/gpt4/ enabled", "/azure/dud/ enabled"})
	is.Equal(eval[string](t, ctx, `document.getElementById("replica").textContent`), "replica-1")
	if nats := eval[string](t, ctx, `document.getElementById("nats").textContent`); !strings.HasPrefix(nats, "connected to nats://127.0.0.1:") {
		t.Fatalf("the page says the NATS connection is %q, not connected to the test's server", nats)
	}
	// A reload would drop this mark: the updates below must come without one.
	eval[bool](t, ctx, `window.notReloaded = true`)

	// A disable written through NATS appears within a second.
	tgt := target(s.ClientURL(), base)
	is.NoErr(ops.DisableRouter(context.Background(), tgt, ops.Disable{Router: "/azure/gpt4/", For: 30 * time.Minute, Reason: "quota exhausted", By: "alice"}, opsEnv, io.Discard))
	took := waitFor(t, ctx, 5*time.Second, `document.querySelector(`+row("/azure/", "/azure/gpt4/")+`).dataset.state === "manual"`)
	t.Logf("the disable showed %v after it was written", took.Round(time.Millisecond))
	is.True(took <= live)                                      // the disable showed within a second
	is.True(eval[bool](t, ctx, `window.notReloaded === true`)) // without a reload
	gpt4 := rowText(t, ctx, "/azure/", "/azure/gpt4/")
	for _, want := range []string{"manual", "quota exhausted", "alice", "left", "until 20"} {
		is.True(strings.Contains(gpt4, want)) // the row shows the state, the reason, who, the countdown and the end
	}
	screenshot(t, ctx, "disabled", "-disabled")

	// The countdown runs on without a snapshot that changes anything.
	left := func() string {
		return eval[string](t, ctx, `document.querySelector(`+row("/azure/", "/azure/gpt4/")+` + " .left").textContent`)
	}
	first := left()
	waitFor(t, ctx, 3*time.Second, `document.querySelector(`+row("/azure/", "/azure/gpt4/")+` + " .left").textContent !== `+fmt.Sprintf("%q", first))

	// Enabling removes it again, as quickly.
	is.NoErr(ops.EnableRouter(context.Background(), tgt, "/azure/gpt4/", io.Discard))
	took = waitFor(t, ctx, 5*time.Second, `document.querySelector(`+row("/azure/", "/azure/gpt4/")+`).dataset.state === "enabled"`)
	t.Logf("the enable showed %v after it was written", took.Round(time.Millisecond))
	is.True(took <= live)                                                                     // the enable showed within a second
	is.True(eval[bool](t, ctx, `window.notReloaded === true`))                                // without a reload
	is.True(!strings.Contains(rowText(t, ctx, "/azure/", "/azure/gpt4/"), "quota exhausted")) // nothing of the disable is left
}

// scenePools are the pools of the screenshot in the README.
var scenePools = []broker.Pool{
	{Ingress: "/azure/", Routers: []broker.Router{{Path: "/azure/gpt35turbo/", Weight: 1}, {Path: "/azure/gpt4/", Weight: 1}, {Path: "/azure/dud/", Weight: 1}}},
	{Ingress: "/openai/", Routers: []broker.Router{{Path: "/openai/gpt4o/", Weight: 1}, {Path: "/openai/gpt4omini/", Weight: 1}}},
}

func TestStatusPageShowsWhatTheReplicasActOnAndSaysWhatItDoesNotKnow(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	// A minute's DISABLED_TIME caps every automatic disable at 8 minutes.
	base := replica.Config{Pools: scenePools, Policy: broker.Policy{DisabledTime: time.Minute}}
	js := natstest.JetStream(t, s)
	store, err := kv.Open(context.Background(), js, kv.Config{Bucket: replica.DefaultBucket})
	is.NoErr(err)
	t.Cleanup(store.Close)
	now := time.Now()
	forged := time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, r := range []broker.Record{
		// A poisoned record: an automatic disable no policy could write.
		{Router: "/openai/gpt4o/", Status: 503, Reason: "egress_status_code 503", At: now, Until: forged, By: "replica-7"},
		// A disable that has ended, its probe out with another replica.
		{Router: "/openai/gpt4omini/", Status: 429, Reason: "egress_status_code 429, Retry-After 2m0s", At: now.Add(-2 * time.Minute), Until: now.Add(-5 * time.Second),
			By: "replica-2", Level: 1, Probe: &broker.Probe{By: "replica-2", At: now, Until: now.Add(2 * time.Minute)}},
		// A router no pool has.
		{Router: "/legacy/gpt3/", Reason: "retired", At: now, By: "carol", Manual: true},
	} {
		_, err := store.Create(context.Background(), r)
		is.NoErr(err)
	}
	fl := startFleet(t, s.ClientURL(), base, 1)

	// Calls as gecholog makes them: choices, and a failure of the dud.
	var calls []string
	for range 40 {
		calls = append(calls, `{"gl_path":"/azure/"}`)
	}
	requestTo(t, s.ClientURL(), append(calls, `{"gl_path":"/azure/dud/","egress_status_code":502}`)...)
	is.NoErr(ops.DisableRouter(context.Background(), target(s.ClientURL(), base),
		ops.Disable{Router: "/azure/gpt4/", For: 30 * time.Minute, Reason: "quota exhausted", By: "alice"}, opsEnv, io.Discard))

	ctx := startBrowser(t, 1280, 800)
	open(t, ctx, fl.addrs[0])
	waitFor(t, ctx, 5*time.Second, `document.querySelector(`+row("/azure/", "/azure/gpt4/")+`).dataset.state === "manual" && `+
		`document.querySelector(`+row("/azure/", "/azure/dud/")+`).dataset.state === "disabled"`)

	// The poisoned record: the page shows the clamped time the replicas act
	// on, marked as clamped, with the record's own beside it.
	gpt4o := rowText(t, ctx, "/openai/", "/openai/gpt4o/")
	is.Equal(eval[string](t, ctx, `document.querySelector(`+row("/openai/", "/openai/gpt4o/")+`).dataset.clamped`), "true")
	is.True(strings.Contains(gpt4o, "CLAMPED") || strings.Contains(gpt4o, "clamped")) // marked as clamped
	is.True(strings.Contains(gpt4o, "record says 2099-01-01 00:00:00Z"))              // with the record's own time beside it
	leftText := eval[string](t, ctx, `document.querySelector(`+row("/openai/", "/openai/gpt4o/")+` + " .left").textContent`)
	left, err := time.ParseDuration(strings.ReplaceAll(strings.TrimSuffix(leftText, " left"), " ", ""))
	is.NoErr(err)
	is.True(left > 0 && left <= 8*time.Minute+2*time.Second) // the longest disable, not 631,947 hours

	// The router on probation, with its probe.
	says(t, "the row of /openai/gpt4omini/", rowText(t, ctx, "/openai/", "/openai/gpt4omini/"), "the probe call is with replica-2")
	// The automatic disable: its status, level and countdown.
	dud := rowText(t, ctx, "/azure/", "/azure/dud/")
	for _, want := range []string{"egress_status_code 502", "status 502", "replica-1", "left"} {
		says(t, "the row of /azure/dud/", dud, want)
	}
	// The router no pool has: named, and said to be ignored, its record
	// not known to the replica.
	is.Equal(eval[[]string](t, ctx, `[...document.querySelectorAll("[data-unknown]")].map(e => e.dataset.unknown)`), []string{"/legacy/gpt3/"})
	says(t, "the page", pageText(ctx), "every replica ignores them")
	// The share of recent choices is the fleet's, and says so.
	says(t, "the share's heading", eval[string](t, ctx, `document.getElementById("share").textContent`), "the whole fleet")
	says(t, "the row of /azure/gpt35turbo/", rowText(t, ctx, "/azure/", "/azure/gpt35turbo/"), "%")
	// The strategies' numbers: a tier and calls in flight for every
	// router; no latency or headroom, as no transaction was heard.
	is.Equal(eval[string](t, ctx, `document.querySelector(`+row("/azure/", "/azure/gpt35turbo/")+` + " [data-label=tier]").textContent`), "0")
	is.True(eval[string](t, ctx, `document.querySelector(`+row("/azure/", "/azure/gpt35turbo/")+` + " [data-label='in flight']").textContent`) != "—") // calls in flight are known
	is.Equal(eval[string](t, ctx, `document.querySelector(`+row("/azure/", "/azure/gpt35turbo/")+` + " [data-label=latency]").textContent`), "—")
	screenshot(t, ctx, "status-page", "")

	// On a phone the page fits the screen's width, every router a card.
	is.NoErr(chromedp.Do(ctx, chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2))))
	waitFor(t, ctx, 2*time.Second, `window.innerWidth === 390`)
	is.True(eval[bool](t, ctx, `document.documentElement.scrollWidth <= window.innerWidth`)) // nothing runs off the side
	is.Equal(eval[string](t, ctx, `getComputedStyle(document.querySelector("thead")).display`), "none")
	screenshot(t, ctx, "status-page-phone", "-phone")
	is.NoErr(chromedp.Do(ctx, chromedp.EmulateReset()))

	// Markup written into a record shows as text and runs nothing.
	markup := `<img src=x onerror="window.pwned=1"><b>bold</b>`
	_, err = store.Put(context.Background(), broker.Record{Router: "/azure/dud/", Status: 500, Reason: markup, At: time.Now(), Until: time.Now().Add(time.Minute), By: "<i>mallory</i>"})
	is.NoErr(err)
	waitFor(t, ctx, 5*time.Second, `document.querySelector(`+row("/azure/", "/azure/dud/")+`).innerText.includes("<b>bold</b>")`)
	is.Equal(eval[int](t, ctx, `document.querySelectorAll("main img, main b, main i").length`), 0) // no element was made of it
	is.True(eval[bool](t, ctx, `window.pwned === undefined`))                                      // and no script ran
}

func TestStatusPageSaysWhatItDoesNotKnowWhenNATSOrTheReplicaIsDown(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	base := replica.Config{}
	fl := startFleet(t, s.ClientURL(), base, 1)
	requestTo(t, s.ClientURL(), `{"gl_path":"/azure/dud/","egress_status_code":503}`)
	ctx := startBrowser(t, 1280, 800)
	open(t, ctx, fl.addrs[0])
	waitFor(t, ctx, 5*time.Second, `document.querySelector(`+row("/azure/", "/azure/dud/")+`).dataset.state === "disabled"`)

	// NATS down: the replica still shows what it last heard, and says that
	// changes made meanwhile are not known.
	s.Shutdown()
	s.WaitForShutdown()
	waitFor(t, ctx, 10*time.Second, `document.getElementById("nats").textContent === "not connected"`)
	text := pageText(ctx)
	says(t, "the page", text, "Not connected to NATS: this is the router health the replica last heard")
	says(t, "the page", text, "Not taking calls: not connected to NATS")
	is.Equal(eval[string](t, ctx, `document.querySelector(`+row("/azure/", "/azure/dud/")+`).dataset.state`), "disabled") // what is known is still shown
	screenshot(t, ctx, "nats-down", "-nats-down")

	// The replica gone: the page keeps what it last said and says since
	// when it has heard nothing.
	fl.stop()
	waitFor(t, ctx, 10*time.Second, `!document.getElementById("link").hidden`)
	says(t, "the page's link line", eval[string](t, ctx, `document.getElementById("link").textContent`), "No word from the replica since")
	is.Equal(eval[string](t, ctx, `document.querySelector(`+row("/azure/", "/azure/dud/")+`).dataset.state`), "disabled")
}

func TestStatusPageSaysItsViewMayBeStaleWhileTheBucketDoesNotAnswer(t *testing.T) {
	s := natstest.Start(t)
	proxy := natstest.StartProxy(t, s.ClientURL())
	fl := startFleet(t, proxy.ClientURL(), replica.Config{}, 1)
	ctx := startBrowser(t, 1280, 800)
	open(t, ctx, fl.addrs[0])
	waitFor(t, ctx, 5*time.Second, `document.querySelector(`+row("/azure/", "/azure/dud/")+`) !== null`)

	// The replica's questions to the bucket's stream go unanswered, as
	// behind a server cut off from its cluster; its connection stays up.
	proxy.Hold(func(subject string) bool { return strings.HasPrefix(subject, "$JS.API.STREAM.INFO.") })
	waitFor(t, ctx, 15*time.Second, `document.getElementById("notes").innerText.includes("Stale: the bucket unreachable for")`)
	text := pageText(ctx)
	says(t, "the page", text, "KV_gl_broker")
	says(t, "the page", text, "Not taking calls: bucket unreachable for")
	says(t, "the page", text, "changes made meanwhile by replicas it cannot hear, or by hand, are not known until the bucket answers")

	proxy.Release()
	waitFor(t, ctx, 15*time.Second, `!document.getElementById("notes").innerText.includes("Stale:")`)
}

func TestStatusPageShowsEveryReplicasRevisionAndDrift(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	js := natstest.JetStream(t, s)
	cs, err := kv.OpenConfig(context.Background(), js, kv.ConfigBucket(replica.DefaultBucket), true)
	is.NoErr(err)
	fl := startFleet(t, s.ClientURL(), replica.Config{FleetConfig: true}, 2)
	ctx := startBrowser(t, 1280, 800)
	open(t, ctx, fl.addrs[0])
	eval[bool](t, ctx, `window.notReloaded = true`)

	// replicas is each replica the page lists, its revision and whether
	// it is out of step.
	const replicas = `[...document.querySelectorAll("#fleet-replicas tr[data-replica]")].map(r => r.dataset.replica + " " + r.dataset.revision + " " + r.dataset.drift).join(", ")`
	listed := func(want string) {
		t.Helper()
		waitFor(t, ctx, 5*time.Second, replicas+` === `+fmt.Sprintf("%q", want))
	}

	// Two replicas on the same revision, shown alike.
	listed("replica-1 1 false, replica-2 1 false")
	says(t, "the replicas' summary", eval[string](t, ctx, `document.getElementById("fleet-summary").textContent`), "every replica heard runs revision 1")
	says(t, "this replica's row", eval[string](t, ctx, `document.querySelector("#fleet-replicas tr[data-replica=replica-1]").innerText`), "this replica")
	is.Equal(eval[string](t, ctx, `document.getElementById("config").textContent`), "revision 1")

	// A new revision: both on it, without a reload.
	latest, err := cs.Latest(context.Background())
	is.NoErr(err)
	rev, err := cs.Write(context.Background(), kv.NewFleetConfig(scenePools, broker.Policy{DisabledTime: time.Minute}, 0), latest.Revision, &latest.Config)
	is.NoErr(err)
	listed(fmt.Sprintf("replica-1 %d false, replica-2 %d false", rev, rev))

	// A replica that does not follow the fleet's configuration runs
	// revision 0: out of step.
	startReplica(t, s.ClientURL(), "replica-own", replica.Config{})
	listed(fmt.Sprintf("replica-1 %d false, replica-own 0 true, replica-2 %d false", rev, rev))
	says(t, "replica-own's row", eval[string](t, ctx, `document.querySelector("#fleet-replicas tr[data-replica=replica-own]").innerText`),
		fmt.Sprintf("behind: runs revision 0, not %d", rev))
	says(t, "the replicas' summary", eval[string](t, ctx, `document.getElementById("fleet-summary").textContent`), "DRIFT: 1 of 3 replicas out of step")

	// A revision written by hand that no replica can read: each that
	// follows the bucket refuses it, and the page says so for each.
	kvb, err := js.KeyValue(context.Background(), kv.ConfigBucket(replica.DefaultBucket))
	is.NoErr(err)
	bad, err := kvb.Put(context.Background(), kv.ConfigKey, []byte(`{"version":1,"pools":[{"ingress":"/azure/","routers":[{"path":"/azure/z/","weight":"NaN"}]}]}`))
	is.NoErr(err)
	listed(fmt.Sprintf("replica-1 %d true, replica-2 %d true, replica-own 0 true", rev, rev))
	refused := fmt.Sprintf("refused revision %d: pools.routers.weight", bad)
	for _, id := range []string{"replica-1", "replica-2"} {
		says(t, id+"'s row", eval[string](t, ctx, `document.querySelector("#fleet-replicas tr[data-replica=`+id+`]").innerText`), refused)
	}
	says(t, "this replica's configuration", eval[string](t, ctx, `document.getElementById("config").textContent`), "refusing a newer one")
	says(t, "the notes", eval[string](t, ctx, `document.getElementById("notes").innerText`), fmt.Sprintf("This replica keeps revision %d: %s", rev, refused))
	is.True(eval[bool](t, ctx, `window.notReloaded === true`)) // all of it without a reload
	screenshot(t, ctx, "fleet", "-fleet")

	// On a phone the replicas fit the screen's width too.
	is.NoErr(chromedp.Do(ctx, chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2))))
	waitFor(t, ctx, 2*time.Second, `window.innerWidth === 390`)
	is.True(eval[bool](t, ctx, `document.documentElement.scrollWidth <= window.innerWidth`)) // nothing runs off the side
	is.NoErr(chromedp.Do(ctx, chromedp.EmulateReset()))
}
