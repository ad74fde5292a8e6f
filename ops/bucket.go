// Package ops holds the operator's commands: status, disable and enable,
// which read and write the router health bucket; check, which reads
// gecholog's gl_config.json; healthcheck, which asks a replica whether it
// is ready; and explain, which asks a replica why a pool's calls go where
// they go.
//
// The bucket commands use the same connection settings and environment as
// the processor, connect once with a short timeout instead of waiting for
// the server forever, and never create the bucket: that is the
// processor's job, and a tool that created it would hide a wrong server
// or BROKER_BUCKET behind an empty table.
package ops

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/gecholog"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/kv"
	"github.com/gecholog/broker/replica"
)

const (
	// dialTimeout bounds connecting to each server of NATS_URL.
	dialTimeout = 5 * time.Second
	// opTimeout bounds everything a command does once connected.
	opTimeout = 10 * time.Second
)

// Target is what the bucket commands act on: the bucket on a NATS server,
// and the pools the replicas serve.
type Target struct {
	NATS   natsconn.Settings
	Bucket string
	Pools  []broker.Pool
	// PoolsFile names where Pools came from, for messages; "" for the
	// default pool.
	PoolsFile string
	// Progress is where a bucket command says what it waits for (standard
	// error); nil says nothing.
	Progress io.Writer
}

// bucket is an open connection to the router health bucket.
type bucket struct {
	store  *kv.Store
	nc     *nats.Conn
	js     jetstream.JetStream
	server string // the connected server, without credentials
}

// withBucket connects as the command cmd, opens the bucket without
// creating it, runs fn with a context bounded by opTimeout, and closes the
// connection. Every failure is one line that says what to do, with no
// secret in it.
func (t Target) withBucket(ctx context.Context, cmd string, fn func(context.Context, bucket) error) error {
	return t.NATS.Scrub(t.openBucket(ctx, cmd, nil, fn))
}

// dial connects as the command cmd; follow reconnects for as long as the
// command runs, otherwise one attempt per server.
func (t Target) dial(cmd string, follow bool) (nc *nats.Conn, server string, err error) {
	opts, err := t.NATS.Options()
	if err != nil {
		return nil, "", err
	}
	opts = append(opts, nats.Name("broker "+cmd), nats.Timeout(dialTimeout), nats.NoCallbacksAfterClientClose())
	if follow {
		opts = append(opts, nats.MaxReconnects(-1), nats.ReconnectWait(time.Second))
	} else {
		// A tool fails fast: one attempt per server, no reconnecting forever.
		opts = append(opts, nats.NoReconnect())
	}
	nc, err = nats.Connect(t.NATS.Servers, opts...)
	if err != nil {
		return nil, "", fmt.Errorf("cannot connect to NATS at %s: %w: %s", t.NATS.Redacted(), err, natsconn.Hint(err))
	}
	return nc, natsconn.Redact(nc.ConnectedUrl()), nil
}

// openBucket is withBucket, unscrubbed; stalled, if not nil, is given the
// connection once if the bucket does not answer within a second.
func (t Target) openBucket(ctx context.Context, cmd string, stalled func(*nats.Conn), fn func(context.Context, bucket) error) error {
	nc, server, err := t.dial(cmd, false)
	if err != nil {
		return err
	}
	defer nc.Close()

	run := ctx
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	store, err := t.open(ctx, js, cmd, func() {
		if stalled != nil {
			stalled(nc)
		}
		t.waiting(ctx, js, cmd, server)
	})
	switch {
	case errors.Is(err, kv.ErrNoBucket), errors.Is(err, kv.ErrNoJetStream):
		return t.notThere(err, server)
	case err != nil:
		return t.noAnswer(run, err, server, js, "")
	}
	defer store.Close()
	return t.noAnswer(run, fn(ctx, bucket{store: store, nc: nc, js: js, server: server}), server, js, cmd)
}

// open opens the bucket without creating it; waiting, if not nil, is
// called once if the bucket does not answer within a second.
func (t Target) open(ctx context.Context, js jetstream.JetStream, cmd string, waiting func()) (*kv.Store, error) {
	// The news tells the replicas of a change at once, even while the
	// cluster elects a JetStream leader.
	return kv.Open(ctx, js, kv.Config{Bucket: t.Bucket, NoCreate: true, News: replica.NewsSubject(t.Bucket), Owner: "broker " + cmd, Waiting: waiting})
}

// waiting says on t.Progress, once the bucket has not answered through
// server for a second, why and for how long the command waits: a cluster
// whose bucket's leader was lost elects another within seconds, and the
// command rides that out rather than fail.
func (t Target) waiting(ctx context.Context, js jetstream.JetStream, cmd, server string) {
	if t.Progress == nil {
		return
	}
	cause := "no answer yet (its leader cannot be reached, or the cluster is electing one)"
	pctx, cancel := context.WithTimeout(ctx, waitProbe)
	defer cancel()
	if err := kv.Probe(pctx, js, t.Bucket); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		cause = kv.Explain(t.Bucket, err)
	}
	left := "until the command's timeout"
	if deadline, ok := ctx.Deadline(); ok {
		left = "up to " + time.Until(deadline).Round(time.Second).String() + " more"
	}
	fmt.Fprintln(t.Progress, natsconn.OneLine(fmt.Sprintf("broker %s: bucket %s does not answer through %s: %s; waiting for it %s", cmd, t.Bucket, server, cause, left)))
}

// waitProbe bounds the question waiting asks.
const waitProbe = 500 * time.Millisecond

// notThere says what to do about a bucket or a JetStream that is not on
// server at all (kv.ErrNoBucket, kv.ErrNoJetStream).
func (t Target) notThere(err error, server string) error {
	if errors.Is(err, kv.ErrNoBucket) {
		return fmt.Errorf("bucket %q does not exist on %s: no broker has run against this server yet, or BROKER_BUCKET differs", t.Bucket, server)
	}
	return fmt.Errorf("JetStream is not enabled on %s, so broker replicas there keep their disables each to itself and no tool can see or change them; to share them, %s", server, gecholog.EnableJetStream)
}

// node is a connection to one NATS server, whether or not the bucket
// answers through it.
type node struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	server string // without credentials
}

const (
	// truthWait bounds how long readOrStale waits for the bucket to answer
	// before it shows the server's own copy instead; the rest of
	// opTimeout is the copy's.
	truthWait = 6 * time.Second
	// leaderlessFor is how long the bucket's stream must say it has no
	// leader or no quorum before readOrStale stops waiting for it: a
	// cluster electing a leader has one again within it, and a replica
	// says its view may be stale after as long (kv.quorumPeerSilence).
	leaderlessFor = 2 * time.Second
	// leaderEvery is how often readOrStale asks the stream meanwhile.
	leaderEvery = 500 * time.Millisecond
)

// withNode connects as the command cmd and runs fn with the connection,
// whether or not the bucket answers through it; follow reconnects for as
// long as fn runs (status --watch), otherwise one attempt per server.
// Every failure is one line with no secret in it.
func (t Target) withNode(cmd string, follow bool, fn func(node) error) error {
	nc, server, err := t.dial(cmd, follow)
	if err == nil {
		defer nc.Close()
		var js jetstream.JetStream
		if js, err = jetstream.New(nc); err == nil {
			err = fn(node{nc: nc, js: js, server: server})
		}
	}
	return t.NATS.Scrub(err)
}

// readOrStale opens the bucket through n as the command cmd and runs read
// on it, within opTimeout, as withBucket does, unless the bucket does not
// answer: its stream has said for leaderlessFor that it has no leader or
// no quorum (a server cut off from the rest of its cluster says so within
// seconds), or it has not answered within truthWait. Then it runs stale
// with n and why, within the rest of opTimeout, so that the command can
// show what the server knows rather than fail. A bucket or JetStream that
// is not there at all, and any other failure, fails as withBucket's does.
func (t Target) readOrStale(ctx context.Context, n node, cmd string, read func(context.Context, bucket) error, stale func(context.Context, node, error) error) error {
	run := ctx
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	rctx, rcancel := context.WithTimeout(ctx, truthWait)
	defer rcancel()
	leaderless := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := waitLeaderless(rctx, n.js, t.Bucket); err != nil {
			leaderless <- err
			rcancel()
		}
	}()
	err := t.readOnce(rctx, n, cmd, read)
	rcancel()
	<-done
	switch {
	case err == nil:
		return nil
	case errors.Is(err, kv.ErrNoBucket), errors.Is(err, kv.ErrNoJetStream):
		return t.notThere(err, n.server)
	case run.Err() != nil:
		return err
	}
	select {
	case cause := <-leaderless:
		err = cause
	default:
	}
	if !unanswered(err) {
		// A refusal, say, which the server's copy would only hide.
		return t.noAnswer(run, err, n.server, n.js, "")
	}
	return stale(ctx, n, err)
}

// unanswered reports whether err says the bucket gave no answer, or
// answered that it has no leader or no quorum.
func unanswered(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) || kv.Leaderless(err)
}

// readOnce opens the bucket through n and runs read on it.
func (t Target) readOnce(ctx context.Context, n node, cmd string, read func(context.Context, bucket) error) error {
	store, err := t.open(ctx, n.js, cmd, nil)
	if err != nil {
		return err
	}
	defer store.Close()
	return read(ctx, bucket{store: store, nc: n.nc, js: n.js, server: n.server})
}

// waitLeaderless asks the bucket's stream every leaderEvery until ctx
// ends, and returns the stream's answer once it has said for
// leaderlessFor that it has no leader or no quorum; nil when ctx ends
// first. A question without an answer neither counts nor resets the time.
func waitLeaderless(ctx context.Context, js jetstream.JetStream, bucket string) error {
	tick := time.NewTicker(leaderEvery)
	defer tick.Stop()
	var since time.Time
	for {
		pctx, cancel := context.WithTimeout(ctx, leaderEvery)
		err := kv.Probe(pctx, js, bucket)
		cancel()
		switch {
		case ctx.Err() != nil:
			return nil
		case kv.Leaderless(err):
			if since.IsZero() {
				since = time.Now()
			}
			if time.Since(since) >= leaderlessFor {
				return err
			}
		case err == nil:
			since = time.Time{}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// noAnswer is timedOut with the cause: when err is the command's deadline,
// or a server's word that no leader took a write (a member left without
// its leader answers for the stream, but takes no write), it asks the
// bucket's stream once more, briefly, and says why it does not answer (no
// leader for KV_gl_broker while the cluster elects one, no quorum,
// JetStream unreachable) rather than a bare deadline.
//
// A write that got no answer may still land: the bucket's leader may hold
// it and commit it once it has its quorum again. For disable and enable
// the error says so, and how to see whether it did.
func (t Target) noAnswer(ctx context.Context, err error, server string, js jetstream.JetStream, cmd string) error {
	deadline := errors.Is(err, context.DeadlineExceeded)
	if !deadline && !errors.Is(err, jetstream.ErrNoStreamResponse) && !kv.Leaderless(err) {
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	cause := "the bucket answers now"
	if perr := kv.Probe(pctx, js, t.Bucket); perr != nil {
		cause = kv.Explain(t.Bucket, perr)
	}
	then := "a cluster electing a leader answers again within seconds, so try again"
	if !deadline {
		// Said at once, as a member left without its leader says it:
		// nothing took the write, so nothing is written.
		return fmt.Errorf("the bucket does not take writes through %s: %s; nothing was written; %s: %w", server, cause, then, err)
	}
	if cmd == "disable" || cmd == "enable" {
		then = "the " + cmd + " may still land once the bucket has its quorum again, and `broker status` then shows whether it did; a cluster electing a leader answers again within seconds"
	}
	return fmt.Errorf("no answer from %s within %v: %s; %s: %w", server, opTimeout, cause, then, err)
}

// probeTimeout bounds the question noAnswer asks.
const probeTimeout = 2 * time.Second

func timedOut(err error, server string) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("no answer from %s within %v: %w", server, opTimeout, err)
	}
	return err
}
