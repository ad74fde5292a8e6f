package statuspage_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/testutil/clocktest"
	"github.com/gecholog/broker/statuspage"
)

// TestStatusPageShowsARouterOutForItsBudget serves the page of a broker
// whose tier-0 router spent its token budget: in Chromium its row is in
// state budget, with the cap spent, how much, and when it is back.
func TestStatusPageShowsARouterOutForItsBudget(t *testing.T) {
	is := is.New(t)
	pool := broker.Pool{Ingress: "/azure/", Routers: []broker.Router{
		{Path: "/azure/ptu/", Weight: 1, Budget: &broker.Budget{TokensPerMinute: 1000}},
		{Path: "/azure/payg/", Weight: 1, Priority: 1}}}
	// A minute's budget starts again on the minute, and then the router is
	// back (this failed once when the page drew its rows 0.2 s after the
	// minute turned).
	clocktest.MinuteToSpare(t, 15*time.Second)
	b, err := broker.New(broker.Config{Pools: []broker.Pool{pool}, Policy: broker.Policy{DisabledTime: time.Minute}, ID: "this"})
	is.NoErr(err)
	t.Cleanup(func() { b.Close(context.Background()) })
	is.NoErr(b.Used([]byte("/azure/ptu/"), broker.Usage{State: broker.UsageKnown, Input: 900, Output: 100}))
	_, srv := serve(t, source{status: statuspage.Status{ID: "this"}, broker: b})

	ctx := startBrowser(t, 1280, 800)
	open(t, ctx, strings.TrimPrefix(srv.URL, "http://"))
	waitFor(t, ctx, 5*time.Second, `document.querySelector(`+row("/azure/", "/azure/ptu/")+`) !== null && `+
		`document.querySelector(`+row("/azure/", "/azure/ptu/")+`).dataset.state === "budget"`)
	text := rowText(t, ctx, "/azure/", "/azure/ptu/")
	t.Log(text)
	is.True(strings.Contains(text, "budget tokens_per_minute spent (1000 of 1000 used)")) // which cap, how much
	is.True(strings.Contains(text, "left"))                                               // and when it is back
	is.Equal(eval[string](t, ctx, `document.querySelector(`+row("/azure/", "/azure/payg/")+`).dataset.state`), "enabled")
}
