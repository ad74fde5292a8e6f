package main

import (
	"encoding/json"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/internal/standin"
	"github.com/gecholog/broker/internal/testutil/natstest"
)

// One transaction on gecholog's logger subject, forged or broken, moves a
// router's figures no further than the bounds the README states: a
// rate-limit reset 2000000h away keeps the router waiting for the longest
// disable (DISABLED_TIME × 8), and status, the page and /metrics say it
// waits and until when; a reset past what a time holds and an upstream
// time stopping in the year 9999 are ignored and counted.
func TestAForgedTransactionIsHeldToTheBoundsAndTheWaitIsShown(t *testing.T) {
	t.Parallel()
	is := is.New(t)
	s := natstest.Start(t)
	pools := filepath.Join(t.TempDir(), "pools.json")
	is.NoErr(os.WriteFile(pools, []byte(`{"pools":[{"ingress":"/azure/","strategy":"headroom","routers":[
		{"path":"/azure/gpt4/"},{"path":"/azure/gpt35turbo/"}]}]}`), 0o600))
	more := []string{"BROKER_POOLS", pools, "DISABLED_TIME", "1"} // the longest disable: 8 minutes
	replicas := []*metricsReplica{startMetricsReplica(t, s.ClientURL(), append(more, "BROKER_ID", "replica-1")...),
		startMetricsReplica(t, s.ClientURL(), append(more, "BROKER_ID", "replica-2")...)}
	waitReady(t, replicas...)
	nc := natstest.Connect(t, s)

	before := time.Now()
	is.NoErr(nc.Publish("coburn.gl.logger", standin.Transaction(standin.Finished{Ingress: "/azure/", Router: "/azure/gpt4/",
		Latency: 40 * time.Millisecond, Headers: map[string]string{"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2000000h"}})))
	now := time.Now().UTC().Format(time.RFC3339Nano)
	is.NoErr(nc.Publish("coburn.gl.logger", []byte(`{"request":{"gl_path":"/azure/gpt35turbo/"},"response":{"gl_path":"/azure/gpt35turbo/","egress_status_code":200,`+
		`"outbound_inbound_timer":{"start":"`+now+`","stop":"9999-12-31T23:59:59Z","duration":1},`+
		`"inbound_headers":{"Anthropic-Ratelimit-Tokens-Remaining":["0"],"Anthropic-Ratelimit-Tokens-Reset":["2300-01-01T00:00:00Z"]}}}`)))
	lbl := func(router string) []string { return []string{"ingress", "/azure/", "router", router} }
	longest := 8 * time.Minute
	headers := false
	for _, r := range replicas {
		natstest.Eventually(t, 5*time.Second, func() bool {
			fs := r.metrics(t)
			return fs.sum("broker_transactions_total", "outcome", "read")+fs.sum("broker_transactions_total", "outcome", "shared") == 2
		}, "both transactions heard: read, or told by the other replica")
		fs := r.metrics(t)
		until := fs.value(t, "broker_router_rate_limited_until_timestamp_seconds", lbl("/azure/gpt4/")...)
		is.True(until >= float64(before.Add(longest).Unix()))                 // waits for its reset, held to the longest disable
		is.True(until <= float64(time.Now().Add(longest+time.Second).Unix())) // and no longer, not 228 years
		// gpt35turbo's reset was ignored: a count said without a reset is
		// full again a minute on.
		is.True(fs.value(t, "broker_router_rate_limited_until_timestamp_seconds", lbl("/azure/gpt35turbo/")...) <= float64(time.Now().Add(time.Minute+time.Second).Unix())) // the wait is held within the bound
		is.True(math.IsNaN(fs.value(t, "broker_router_latency_seconds", lbl("/azure/gpt35turbo/")...)))                                                                     // and its time is no sample
		is.Equal(fs.sum("broker_transactions_out_of_bounds_total"), 1.0)                                                                                                    // and both counted, in one transaction
		is.Equal(fs.value(t, "broker_router_headroom_ratio", lbl("/azure/gpt4/")...), 0.0)

		code, body, err := r.get("/status.json")
		is.NoErr(err)
		is.Equal(code, http.StatusOK)
		var snap struct {
			Pools []struct {
				Routers []struct {
					Router           string     `json:"router"`
					State            string     `json:"state"`
					RateLimitedUntil *time.Time `json:"rate_limited_until"`
				} `json:"routers"`
			} `json:"pools"`
		}
		is.NoErr(json.Unmarshal([]byte(body), &snap))
		for _, row := range snap.Pools[0].Routers {
			switch row.Router {
			case "/azure/gpt4/":
				is.Equal(row.State, "enabled")
				is.True(row.RateLimitedUntil != nil && row.RateLimitedUntil.Unix() == int64(until)) // the page says until when
			default:
				is.True(row.RateLimitedUntil != nil && row.RateLimitedUntil.Before(time.Now().Add(time.Minute+time.Second))) // status shows the wait, held within the bound
			}
		}
		line := r.await(t, "ignoring a value of a transaction from gecholog's log that is out of bounds")
		is.True(strings.Contains(line["error"].(string), "in-flight bound")) // the time, and why
		// The reset: the replica that read the transaction says so; the
		// other was told what the reader took of it, the reset left out.
		headers = headers || strings.Contains(line["error"].(string), "rate-limit header(s) that cannot be read")
	}
	is.True(headers) // the reset, said

	ops := env("NATS_URL", s.ClientURL(), "BROKER_POOLS", pools, "DISABLED_TIME", "1")
	var rows []map[string]any
	natstest.Eventually(t, 5*time.Second, func() bool {
		rows = statusJSON(t, ops)
		return jsonRow(rows, "/azure/gpt4/")["rate_limited_until"] != nil
	}, "status says gpt4 waits for its reset")
	gpt4 := jsonRow(rows, "/azure/gpt4/")
	is.Equal(gpt4["state"], "enabled")
	until, err := time.Parse(time.RFC3339, gpt4["rate_limited_until"].(string))
	is.NoErr(err)
	is.True(!until.After(time.Now().Add(longest + time.Second))) // held to the longest disable
	table, _, err := runOp(ops, "status")
	is.NoErr(err)
	t.Logf("broker status\n%s", table)
	row := tableRow(table, "/azure/gpt4/")
	is.True(strings.Contains(row, "enabled (rate-limited: waits for its reset)")) // the state says it waits
	is.True(strings.Contains(row, until.UTC().Format(time.RFC3339)))              // and until when
}
