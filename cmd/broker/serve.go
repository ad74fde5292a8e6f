package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/kv"
)

func serveCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	c, err := parseServe(args, getenv, stdout)
	if err != nil {
		return err
	}
	return serve(ctx, c, newLogger(c, stderr), nil)
}

// enableJetStream is the fix the broker names when the server has no
// JetStream, as gecholog's stock nats-server.conf has none.
const enableJetStream = `add "jetstream { store_dir: /app/working/jetstream }" to gecholog's /app/conf/nats-server.conf (this repository's nats-server.conf does) and restart gecholog`

// serve runs one replica until ctx ends, then stops taking calls, finishes
// those in flight and returns nil. ready, if not nil, is called once the
// replica answers calls, with the replica's broker.
func serve(ctx context.Context, c config, log *slog.Logger, ready func(*broker.Broker)) error {
	c.policy.DisabledTime = c.disabledTime
	policy, err := c.policy.Resolve()
	if err != nil {
		return err
	}
	c.policy = policy
	if c.reattachEvery <= 0 {
		c.reattachEvery = 5 * time.Second
	}
	if c.glConfig != "" {
		if err := checkAtStartup(c); err != nil {
			return err
		}
	}
	opts, err := natsOptions(c, log)
	if err != nil {
		return err
	}
	var mon *monitor // nil: metrics and health are off
	if c.metricsAddr != "" {
		// Listening before connecting lets /healthz answer, and /readyz
		// say why not, while the replica waits for the server. Deferred
		// first, the listener closes last, after the drain.
		mon = newMonitor(log)
		if err := mon.listen(c.metricsAddr); err != nil {
			return err
		}
		defer mon.close()
	}
	if c.embedded {
		s, err := startEmbedded(c, log)
		if err != nil {
			return err
		}
		defer func() { s.Shutdown(); s.WaitForShutdown() }()
		c.server = s.ClientURL()
	}

	nc, err := connect(ctx, c, opts, log)
	if err != nil {
		return nil // ctx ended while waiting for the server: a clean stop
	}
	defer nc.Close()
	mon.connected(nc)

	var store *kv.Store
	var bstore broker.Store // stays a nil interface in local mode
	mode := "local"
	store, err = attach(ctx, nc, c, log)
	switch {
	case errors.Is(err, kv.ErrNoJetStream) && c.requireKV:
		return fmt.Errorf("require-kv: JetStream is not enabled on the NATS server %s; %s", redact(nc.ConnectedUrl()), enableJetStream)
	case errors.Is(err, kv.ErrNoJetStream):
		log.Warn("JetStream is not enabled on the NATS server: serving in local mode, where each replica keeps its own disables as the original broker did, and trying again every "+c.reattachEvery.String()+"; to share them, "+enableJetStream,
			slog.String("server", redact(nc.ConnectedUrl())))
	case err != nil:
		return nil // ctx ended
	default:
		defer store.Close()
		bstore = store
		mode = store.Mode().String()
	}
	mon.attached(mode)

	b, err := broker.New(broker.Config{
		Pools:  c.pools,
		Policy: c.policy,
		ID:     c.id,
		Store:  bstore,
		Logger: log,
	})
	if err != nil {
		return err
	}
	mon.started(b)
	if store != nil {
		resyncOnReconnect(nc, store, log)
		// The view is complete before the first call is answered.
		if err := store.Watch(ctx, b.Observe); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("load router health from bucket %q: %w", c.bucket, err)
		}
	} else {
		attached := make(chan struct{})
		go reattach(ctx, nc, c, log, b, mon, attached)
		defer func() { <-attached }()
	}

	mon.stage(subscribing)
	sub, err := nc.QueueSubscribe(c.subject, c.queue, mon.timed(func(m *nats.Msg) {
		reply := b.Handle(m.Data)
		if m.Reply != "" {
			_ = m.Respond(reply) // fails only when the connection is closed
		}
	}))
	if err != nil {
		return fmt.Errorf("subscribe to %q: %w", c.subject, err)
	}
	// A burst waits in this queue while the handler catches up. gecholog
	// gives up after its processor timeout (50 ms), so a deep queue only
	// answers calls in vain, yet a burst of 50,000 calls (the fault tests')
	// must not be dropped: 64 Ki calls hold it with room to spare, about
	// 16 MB of overhead plus at most 32 MiB of payload. nats.go's defaults
	// (500,000 calls) let a stalled replica queue ~125 MB, seconds of work.
	// Beyond the limit the newest calls are dropped with one slow-consumer
	// error, and gecholog keeps those calls on the ingress router.
	if err := sub.SetPendingLimits(1<<16, 32<<20); err != nil {
		return fmt.Errorf("subscribe to %q: %w", c.subject, err)
	}
	closed := sub.StatusChanged(nats.SubscriptionClosed)
	if err := nc.Flush(); err != nil {
		return fmt.Errorf("subscribe to %q: %w", c.subject, err)
	}
	// The server refuses a subscription asynchronously; after the flush's
	// round trip the refusal has arrived if there was one.
	if err := nc.LastError(); errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), strconv.Quote(c.subject)) {
		return fmt.Errorf("subscribe to %q in queue group %q: %w: allow the broker's NATS user to subscribe to %q", c.subject, c.queue, err, c.subject+" "+c.queue)
	}
	mon.stage("") // ready
	log.Info("serving",
		slog.String("subject", c.subject), slog.String("queue", c.queue),
		slog.String("bucket", c.bucket), slog.String("ttl_mode", mode),
		slog.Int("pools", len(c.pools)), slog.String("disabled_time", c.disabledTime.String()),
		slog.String("id", c.id), slog.String("server", redact(nc.ConnectedUrl())))
	if ready != nil {
		ready(b)
	}

	<-ctx.Done()
	mon.stage(stopping)
	log.Info("stopping: finishing calls in flight")
	// Draining needs the server; without a connection no call can be in
	// flight, so do not wait for one.
	if !nc.IsConnected() {
		_ = sub.Unsubscribe()
	} else if err := sub.Drain(); err == nil {
		select {
		case <-closed:
		case <-time.After(10 * time.Second):
			log.Warn("calls still in flight after 10s; stopping anyway")
		}
	}
	wctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	b.Close(wctx)
	_ = nc.Flush()
	log.Info("stopped")
	return nil
}

// natsOptions turns the connection settings into nats.go options. Files are
// checked here so that a wrong path stops startup with one clear line
// instead of failing every reconnect.
func natsOptions(c config, log *slog.Logger) ([]nats.Option, error) {
	for _, f := range []struct{ setting, path string }{
		{"creds", c.creds}, {"nkey", c.nkey}, {"tlscert", c.tlsCert}, {"tlskey", c.tlsKey}, {"tlsca", c.tlsCA},
	} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			return nil, fmt.Errorf("%s: %w", f.setting, err)
		}
	}
	opts := []nats.Option{
		nats.Name("gecholog-broker " + c.id),
		nats.MaxReconnects(-1),                     // as the original: never give up on the gateway's bus
		nats.ReconnectWait(250 * time.Millisecond), // plus nats.go's jitter, so replicas do not come back in step
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("disconnected from NATS; reconnecting", slog.Any("error", err))
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("reconnected to NATS", slog.String("server", redact(nc.ConnectedUrl())))
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			attrs := []any{slog.Any("error", err)}
			if sub != nil {
				attrs = append(attrs, slog.String("subject", sub.Subject))
				if dropped, derr := sub.Dropped(); derr == nil && dropped > 0 {
					attrs = append(attrs, slog.Int("dropped_calls", dropped))
				}
			}
			log.Error("NATS error", attrs...)
		}),
	}
	if c.token != "" {
		opts = append(opts, nats.Token(c.token))
	}
	if c.user != "" {
		opts = append(opts, nats.UserInfo(c.user, c.password))
	}
	if c.creds != "" {
		opts = append(opts, nats.UserCredentials(c.creds))
	}
	if c.nkey != "" {
		o, err := nats.NkeyOptionFromSeed(c.nkey)
		if err != nil {
			return nil, fmt.Errorf("nkey %s: %w", c.nkey, err)
		}
		opts = append(opts, o)
	}
	if c.tlsCert != "" {
		opts = append(opts, nats.ClientCert(c.tlsCert, c.tlsKey))
	}
	if c.tlsCA != "" {
		opts = append(opts, nats.RootCAs(c.tlsCA))
	}
	return opts, nil
}

// connect dials c.server until it answers or ctx ends. Failures are logged
// when they start and then every half minute, not every second, and
// never with a credential in them.
func connect(ctx context.Context, c config, opts []nats.Option, log *slog.Logger) (*nats.Conn, error) {
	for attempt := 0; ; attempt++ {
		nc, err := nats.Connect(c.server, opts...)
		if err == nil {
			return nc, nil
		}
		if attempt%30 == 0 {
			log.Warn("cannot connect to NATS; retrying every second", slog.String("server", redact(c.server)),
				slog.Any("error", c.scrub(err)), slog.String("hint", connectHint(err)))
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// connectHint names the settings to look at for a failed connection.
func connectHint(err error) string {
	var tlsErr *tls.CertificateVerificationError
	switch {
	case errors.Is(err, nats.ErrAuthorization):
		return "the server refused the credentials: check NATS_TOKEN (or NATS_USER and NATS_PASSWORD, NATS_CREDS, NATS_NKEY)"
	case errors.As(err, &tlsErr), strings.Contains(err.Error(), "tls:"), strings.Contains(err.Error(), "x509:"),
		errors.Is(err, nats.ErrSecureConnRequired), errors.Is(err, nats.ErrSecureConnWanted):
		return "TLS failed: check NATS_CA (the CA that signed the server's certificate), NATS_CERT and NATS_KEY, and a tls:// URL"
	}
	return "is the server running and reachable? set NATS_URL or GECHOLOG_HOST"
}

// attach opens the bucket, retrying until ctx ends. A server without
// JetStream gives kv.ErrNoJetStream at once.
func attach(ctx context.Context, nc *nats.Conn, c config, log *slog.Logger) (*kv.Store, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		store, err := kv.Open(actx, js, kv.Config{Bucket: c.bucket, Replicas: c.kvReplicas, Owner: c.id, Logger: log, Linger: c.policy.ProbeTimeout})
		cancel()
		if err == nil || errors.Is(err, kv.ErrNoJetStream) {
			return store, err
		}
		if attempt%30 == 0 {
			log.Warn("cannot open the router health bucket; retrying", slog.String("bucket", c.bucket), slog.Any("error", err))
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// reattach keeps trying to open the bucket for a replica that started in
// local mode, and switches the replica to it once JetStream is there,
// carrying the disables it holds over. It closes done when it stops.
func reattach(ctx context.Context, nc *nats.Conn, c config, log *slog.Logger, b *broker.Broker, mon *monitor, done chan<- struct{}) {
	defer close(done)
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(c.reattachEvery):
		}
		js, err := jetstream.New(nc)
		if err != nil {
			continue
		}
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		store, err := kv.Open(actx, js, kv.Config{Bucket: c.bucket, Replicas: c.kvReplicas, Owner: c.id, Logger: log, Linger: c.policy.ProbeTimeout})
		cancel()
		if err != nil {
			continue // still no JetStream, or the server is away: try again later
		}
		b.Attach(store)
		resyncOnReconnect(nc, store, log)
		if err := store.Watch(ctx, b.Observe); err != nil {
			store.Close()
			continue
		}
		mon.attached(store.Mode().String())
		mon.stage("")
		log.Info("JetStream is available: router health is now shared through the bucket, local disables carried over",
			slog.String("bucket", c.bucket), slog.String("ttl_mode", store.Mode().String()))
		<-ctx.Done()
		store.Close()
		return
	}
}

// resyncOnReconnect reloads the view from the bucket after every reconnect,
// instead of waiting for the watcher to miss its heartbeats.
func resyncOnReconnect(nc *nats.Conn, store *kv.Store, log *slog.Logger) {
	nc.SetReconnectHandler(func(nc *nats.Conn) {
		log.Info("reconnected to NATS", slog.String("server", redact(nc.ConnectedUrl())), slog.Bool("reloading_router_health", true))
		store.Resync()
	})
}
