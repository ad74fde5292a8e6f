package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/broker"
)

// demoCommand shows the broker at work with nothing installed: an embedded
// nats-server with JetStream, two replicas, local upstreams for gpt4 and
// gpt35turbo, a dead dud, and a stand-in for gecholog making its two
// processor calls per client call.
func demoCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	s := newSettings("demo", getenv)
	var after int
	var disabled time.Duration
	s.int(&after, "requests", "", 10, 1, 10000, "`requests` to make after the dud has failed")
	s.minutes(&disabled, "disabled-time", "DISABLED_TIME", 10, "`minutes` a failed router stays out of its pool")
	if err := s.parse(args, stdout); err != nil {
		return err
	}

	store, err := os.MkdirTemp("", "broker-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(store)
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	base := config{
		subject: "coburn.gl.broker", queue: "broker", bucket: "gl_broker", kvReplicas: 1,
		disabledTime: disabled, pools: broker.DefaultPools(),
		embeddedListen: "127.0.0.1:0", embeddedStore: store,
	}
	srv, err := startEmbedded(base, slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
	base.server = srv.ClientURL()

	upstreams, err := startUpstreams()
	if err != nil {
		return err
	}
	defer upstreams.close()

	// Two replicas, as `docker compose up --scale broker=2` would run.
	rctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	replicas := make(chan *broker.Broker, 2)
	for _, id := range []string{"replica-1", "replica-2"} {
		c := base
		c.id = id
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := serve(rctx, c, log.With(slog.String("replica", id)), func(b *broker.Broker) { replicas <- b }); err != nil {
				fmt.Fprintln(stderr, "broker demo:", id, err)
			}
		}()
	}
	var views []*broker.Broker
	for len(views) < 2 {
		select {
		case b := <-replicas:
			views = append(views, b)
		case <-time.After(10 * time.Second):
			return errors.New("demo: replicas not ready within 10s")
		case <-ctx.Done():
			return nil
		}
	}

	nc, err := nats.Connect(base.server)
	if err != nil {
		return err
	}
	defer nc.Close()
	gw := gateway{nc: nc, subject: base.subject, upstreams: upstreams.urls, client: &http.Client{Timeout: 5 * time.Second}}

	fmt.Fprintf(stdout, "gecholog stand-in → 2 broker replicas on embedded NATS %s, bucket %s, DISABLED_TIME %v minutes\n\n",
		base.server, base.bucket, disabled.Minutes())
	dudFailed := false
	for i, left := 1, after; left > 0 && i <= 1000; i++ {
		if ctx.Err() != nil {
			return nil
		}
		router, status, err := gw.call("/azure/")
		if err != nil {
			return err
		}
		line := fmt.Sprintf("request%d to /azure/ randomly selects %s %d", i, router, status)
		if broker.Failure(status) {
			line += fmt.Sprintf(" failed. Disabled for %v minutes", disabled.Minutes())
		}
		fmt.Fprintln(stdout, line)
		if router == "/azure/dud/" && broker.Failure(status) && !dudFailed {
			dudFailed = true
			start := time.Now()
			for _, b := range views {
				for slices.Contains(b.Routers("/azure/"), "/azure/dud/") {
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

	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	bucket, err := js.KeyValue(ctx, base.bucket)
	if err != nil {
		return err
	}
	keys, err := bucket.Keys(ctx)
	if err != nil && !errors.Is(err, jetstream.ErrNoKeysFound) {
		return err
	}
	fmt.Fprintf(stdout, "\n$ nats kv ls %s\n", base.bucket)
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
		fmt.Fprintf(stdout, "\n$ nats kv get %s %s --raw\n%s\n", base.bucket, k, pretty.String())
	}
	return nil
}

// gateway makes a call the way gecholog does: the request context to the
// broker, the call to the chosen router's upstream, then the response
// context with the status the client got.
type gateway struct {
	nc        *nats.Conn
	subject   string
	upstreams map[string]string // router → upstream URL
	client    *http.Client
}

func (g gateway) call(ingress string) (router string, status int, err error) {
	msg, err := g.nc.Request(g.subject, fmt.Appendf(nil, `{"gl_path":%q}`, ingress), 2*time.Second)
	if err != nil {
		return "", 0, fmt.Errorf("request context: %w", err)
	}
	router = ingress
	if len(msg.Data) > 0 {
		var r struct {
			GLPath string `json:"gl_path"`
		}
		if err := json.Unmarshal(msg.Data, &r); err != nil {
			return "", 0, fmt.Errorf("broker reply %q: %w", msg.Data, err)
		}
		router = r.GLPath
	}
	status = http.StatusBadGateway // gecholog's answer when the connection is refused
	if resp, err := g.client.Post(g.upstreams[router], "application/json", bytes.NewReader([]byte(`{"messages":[]}`))); err == nil {
		status = resp.StatusCode
		resp.Body.Close()
	}
	if _, err := g.nc.Request(g.subject, fmt.Appendf(nil, `{"gl_path":%q,"egress_status_code":%d}`, router, status), 2*time.Second); err != nil {
		return "", 0, fmt.Errorf("response context: %w", err)
	}
	return router, status, nil
}

type upstreams struct {
	urls    map[string]string
	servers []*http.Server
}

// startUpstreams serves gpt4 and gpt35turbo on loopback and gives the dud
// (and the ingress, which the demo never needs) the address of a closed
// port, where connections are refused.
func startUpstreams() (*upstreams, error) {
	u := &upstreams{urls: map[string]string{}}
	for router, model := range map[string]string{"/azure/gpt4/": "gpt-4", "/azure/gpt35turbo/": "gpt-35-turbo"} {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			u.close()
			return nil, err
		}
		body := fmt.Appendf(nil, `{"object":"chat.completion","model":%q}`, model)
		s := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(body)
		})}
		go func() { _ = s.Serve(l) }()
		u.servers = append(u.servers, s)
		u.urls[router] = "http://" + l.Addr().String() + "/"
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		u.close()
		return nil, err
	}
	dead := "http://" + l.Addr().String() + "/"
	l.Close()
	u.urls["/azure/dud/"], u.urls["/azure/"] = dead, dead
	return u, nil
}

func (u *upstreams) close() {
	for _, s := range u.servers {
		s.Close()
	}
}
