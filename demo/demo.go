// Package demo shows the broker at work with nothing installed: an
// embedded nats-server with JetStream, two replicas, local upstreams for
// gpt4 and gpt35turbo, a dead dud, and a stand-in for gecholog making its
// two processor calls per client call; then a pool in priority tiers, whose
// PTU deployment's 429 moves the calls to tier 1 until its Retry-After.
package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/standin"
	"github.com/gecholog/broker/replica"
)

// Options are the demo's settings.
type Options struct {
	// Requests is how many requests to make after the dud has failed.
	Requests int
	// DisabledTime is how long a failed router stays out.
	DisabledTime time.Duration
}

// Run runs the demo, printing what happens to stdout and the replicas'
// warnings to stderr.
func Run(ctx context.Context, o Options, stdout, stderr io.Writer) error {
	store, err := os.MkdirTemp("", "broker-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(store)
	srv, err := replica.StartEmbedded(replica.Embedded{Listen: "127.0.0.1:0", StoreDir: store}, "", slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()

	upstreams, err := standin.StartUpstreams()
	if err != nil {
		return err
	}
	defer upstreams.Close()

	// Two replicas, as `docker compose up --scale broker=2` would run.
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ptu := &standin.LLM{Model: "gpt-4o (PTU)", Quota: 5, Window: 2 * time.Second}
	if err := tieredUpstreams(upstreams, ptu); err != nil {
		return err
	}
	base := replica.Config{
		NATS:   natsconn.Settings{Servers: srv.ClientURL()},
		Pools:  append(broker.DefaultPools(), tieredPool),
		Policy: broker.Policy{DisabledTime: o.DisabledTime},
	}
	fleet, err := replica.StartFleet(ctx, base, 2, func(id string) *slog.Logger { return log.With(slog.String("replica", id)) })
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("demo: %w", err)
	}
	defer fleet.Stop()

	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		return err
	}
	defer nc.Close()
	gw := standin.Gateway{NC: nc, Subject: replica.DefaultSubject, Upstreams: upstreams.URLs, Client: &http.Client{Timeout: 5 * time.Second}}

	fmt.Fprintf(stdout, "gecholog stand-in → 2 broker replicas on embedded NATS %s, bucket %s, DISABLED_TIME %v minutes\n\n",
		srv.ClientURL(), replica.DefaultBucket, o.DisabledTime.Minutes())
	dudFailed := false
	for i, left := 1, o.Requests; left > 0 && i <= 1000; i++ {
		if ctx.Err() != nil {
			return nil
		}
		router, status, err := gw.Call("/azure/")
		if err != nil {
			return err
		}
		line := fmt.Sprintf("request%d to /azure/ randomly selects %s %d", i, router, status)
		if broker.Failure(status) {
			line += fmt.Sprintf(" failed. Disabled for %v minutes", o.DisabledTime.Minutes())
		}
		fmt.Fprintln(stdout, line)
		if router == "/azure/dud/" && broker.Failure(status) && !dudFailed {
			dudFailed = true
			start := time.Now()
			for _, r := range fleet.Replicas {
				for slices.Contains(r.Broker().Routers("/azure/"), "/azure/dud/") {
					if time.Since(start) > 5*time.Second {
						return errors.New("demo: a replica still chooses /azure/dud/ 5s after its failure")
					}
					time.Sleep(time.Millisecond)
				}
			}
			fmt.Fprintf(stdout, "# both replicas dropped /azure/dud/ within %v of the failure report\n",
				time.Since(start).Round(10*time.Microsecond))
		}
		if dudFailed {
			left--
		}
	}
	if !dudFailed {
		return errors.New("demo: /azure/dud/ was never chosen in 1000 requests")
	}
	if err := listBucket(ctx, nc, stdout); err != nil {
		return err
	}
	return tiers(ctx, gw, ptu, stdout)
}

// listBucket prints what `nats kv ls` and `nats kv get` show.
func listBucket(ctx context.Context, nc *nats.Conn, stdout io.Writer) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	bucket, err := js.KeyValue(ctx, replica.DefaultBucket)
	if err != nil {
		return err
	}
	// The replicas drop the dud on the failing replica's news, before its
	// write lands in the bucket (on a busy machine, the listing came
	// first once): list the bucket once it holds the disable.
	if err := landed(ctx, bucket, "/azure/dud/", 10*time.Second); err != nil {
		return err
	}
	keys, err := bucket.Keys(ctx)
	if err != nil && !errors.Is(err, jetstream.ErrNoKeysFound) {
		return err
	}
	fmt.Fprintf(stdout, "\n$ nats kv ls %s\n", replica.DefaultBucket)
	for _, k := range keys {
		fmt.Fprintln(stdout, k)
	}
	for _, k := range keys {
		e, err := bucket.Get(ctx, k)
		if err != nil {
			return err
		}
		var pretty bytes.Buffer
		_ = json.Indent(&pretty, e.Value(), "", "  ")
		fmt.Fprintf(stdout, "\n$ nats kv get %s %s --raw\n%s\n", replica.DefaultBucket, k, pretty.String())
	}
	return nil
}

// landed waits up to within for bucket to hold a value for key.
func landed(ctx context.Context, bucket jetstream.KeyValue, key string, within time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	w, err := bucket.Watch(ctx, key)
	if err != nil {
		return err
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case e := <-w.Updates():
			if e != nil && e.Operation() == jetstream.KeyValuePut {
				return nil
			}
		case <-ctx.Done():
			return fmt.Errorf("demo: the disable of %s did not land in bucket %s within %v", key, bucket.Bucket(), within)
		}
	}
}

// tieredPool is a provisioned-throughput deployment (PTU) first, with two
// pay-as-you-go deployments behind it, as Azure's "smart load balancing"
// samples set them up.
var tieredPool = broker.Pool{Ingress: "/openai/", Routers: []broker.Router{
	{Path: "/openai/ptu/", Weight: 1, Priority: 0},
	{Path: "/openai/payg1/", Weight: 1, Priority: 1},
	{Path: "/openai/payg2/", Weight: 1, Priority: 1},
}}

// tieredUpstreams serves the tiered pool's deployments: the PTU allows
// quota calls per window and answers the rest 429 with Retry-After, as
// Azure's do; the pay-as-you-go ones take any number.
func tieredUpstreams(u *standin.Upstreams, ptu *standin.LLM) error {
	if err := u.Add("/openai/ptu/", ptu); err != nil {
		return err
	}
	for _, r := range []string{"/openai/payg1/", "/openai/payg2/"} {
		if err := u.Add(r, &standin.LLM{Model: "gpt-4o (pay-as-you-go)"}); err != nil {
			return err
		}
	}
	return nil
}

// tiers shows the tiered pool: calls go to the PTU deployment until it
// answers 429, then to the pay-as-you-go ones until its Retry-After has
// passed and a probe finds it answering again.
func tiers(ctx context.Context, gw standin.Gateway, ptu *standin.LLM, stdout io.Writer) error {
	fmt.Fprintf(stdout, "\n# priority tiers: /openai/ sends calls to its PTU deployment (tier 0) first; it allows %d calls per %v\n", ptu.Quota, ptu.Window)
	tier := map[string]int{}
	for _, r := range tieredPool.Routers {
		tier[r.Path] = r.Priority
	}
	limited, spilled := false, 0
	deadline := time.Now().Add(time.Minute)
	for i := 1; time.Now().Before(deadline); i++ {
		if ctx.Err() != nil {
			return nil
		}
		router, status, err := gw.Call("/openai/")
		if err != nil {
			return err
		}
		line := fmt.Sprintf("request%d to /openai/ selects %s (tier %d) %d", i, router, tier[router], status)
		switch {
		case status == http.StatusTooManyRequests:
			limited = true
			line += " with Retry-After: out until then, and tier 1 takes the calls"
		case limited && router == "/openai/ptu/":
			fmt.Fprintln(stdout, line+": its Retry-After has passed, and the probe found it answering; calls return to tier 0")
			return nil
		case limited:
			spilled++
		}
		fmt.Fprintln(stdout, line)
		if limited {
			// Paced, so that the Retry-After passes within a few lines.
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	return fmt.Errorf("demo: /openai/ptu/ did not come back within a minute (%d calls went to tier 1)", spilled)
}
