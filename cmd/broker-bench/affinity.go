package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/gecholog"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/safetext"
	"github.com/gecholog/broker/internal/standin"
	"github.com/gecholog/broker/ops"
)

// Session affinity (issue 24), measured on replica processes of the
// broker binary, with calls spread over them by the queue group and each
// call made as gecholog makes it: the request context with the client's
// headers as ingress_headers, the upstream call, the response context,
// and the transaction, with its session_id and the upstream's answer, on
// the logger subject. A session is a client's conversation: its first
// call carries no Session-Id (gecholog starts the session), each next
// one the id the previous answer gave.
//   - all healthy: the share of a session's calls on its router (the
//     router of its first keyed call), and each router's share against
//     its weight;
//   - a router disabled by hand mid-run: its sessions move, no other does;
//   - prompt caching: deployments that report cached input tokens when a
//     conversation comes back within the cache lifetime, with affinity and
//     with random, in the same run.

const (
	// affinityGateway is the gateway_id in the sessions' ids.
	affinityGateway = "BENCHGW1"
	// affinityNano is the UNIXNANO part of the first session's id: fixed,
	// so that every run keys the same sessions and the figures repeat.
	affinityNano = int64(1764000000000000000)
	// cacheLifetime is how long a deployment keeps a conversation's
	// prompt prefix: OpenAI's and Azure OpenAI's 5 to 10 minutes of
	// inactivity, at the short end.
	cacheLifetime = 5 * time.Minute
	// affinityTimeout bounds the whole mode.
	affinityTimeout = 15 * time.Minute
	// maxConversations bounds what one deployment's cache keeps.
	maxConversations = 1 << 20
	// maxPromptBody bounds the request body a deployment reads.
	maxPromptBody = 1 << 20
)

// affinityWeights are the three routers' weights in every pool of the
// mode: a takes half the sessions.
var affinityWeights = []struct {
	name   string
	weight int
}{{"a", 2}, {"b", 1}, {"c", 1}}

// affinityPool is /name/ over a, b and c by affinityWeights.
func affinityPool(name, strategy string, aff broker.Affinity) broker.Pool {
	p := broker.Pool{Ingress: "/" + name + "/", Strategy: strategy, Affinity: aff}
	for _, w := range affinityWeights {
		p.Routers = append(p.Routers, broker.Router{Path: p.Ingress + w.name + "/", Weight: w.weight})
	}
	return p
}

// promptCache is a deployment that caches prompt prefixes as OpenAI's
// and Azure OpenAI's do: a prompt that begins with one this deployment
// saw within cacheLifetime has that part billed as cached input, told in
// usage.prompt_tokens_details.cached_tokens, in blocks of 128 tokens. A
// conversation's prompt is its whole history, so it begins with the one
// before; its first message names it.
type promptCache struct {
	now func() time.Time // nil: time.Now

	mu   sync.Mutex
	seen map[string]seenPrompt // conversation → the longest prompt seen

	calls, hits, input, cached atomic.Int64
}

type seenPrompt struct {
	tokens int
	at     time.Time
}

// promptTokens is the size of a prompt of n messages: a long system
// prompt and 256 tokens a message.
func promptTokens(n int) int { return 1024 + 256*(n-1) }

func (c *promptCache) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Messages []struct {
			Content string `json:"content"`
		} `json:"messages"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, maxPromptBody)).Decode(&req); err != nil || len(req.Messages) == 0 {
		http.Error(w, `{"error":{"message":"a chat completion request has messages"}}`, http.StatusBadRequest)
		return
	}
	conv := safetext.Clip(req.Messages[0].Content, broker.MaxSessionKey)
	prompt := promptTokens(len(req.Messages))
	now := time.Now()
	if c.now != nil {
		now = c.now()
	}
	hit := 0
	c.mu.Lock()
	if c.seen == nil {
		c.seen = map[string]seenPrompt{}
	}
	p, ok := c.seen[conv]
	if ok && now.Sub(p.at) <= cacheLifetime {
		hit = min(p.tokens, prompt) / 128 * 128
	}
	if ok || len(c.seen) < maxConversations {
		c.seen[conv] = seenPrompt{max(prompt, p.tokens), now}
	}
	c.mu.Unlock()
	c.calls.Add(1)
	c.input.Add(int64(prompt))
	if hit > 0 {
		c.hits.Add(1)
		c.cached.Add(int64(hit))
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"object":"chat.completion","model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],`+
		`"usage":{"prompt_tokens":%d,"completion_tokens":40,"total_tokens":%d,"prompt_tokens_details":{"cached_tokens":%d}}}`, prompt, prompt+40, hit)
}

// affSession is one conversation: the router each of its calls used (""
// for a call that failed).
type affSession struct {
	n       int // its number, in its id
	ingress string
	routers []string
	// own is its router by the session's order: where every replica sends
	// its keyed calls while no router is at its load bound (see
	// ownRouters); after is its own once the disabled router is out.
	own, after string
}

// id is the session id gecholog gives the session's call t.
func (s *affSession) id(t int) string {
	return fmt.Sprintf("%s_%d_%d_%d", affinityGateway, affinityNano+int64(s.n)*1_000_003, s.n, t)
}

// call is the session's call t, as its client sends it: the history so
// far and a new question; from the second call on, the Session-Id the
// previous answer gave.
func (s *affSession) call(t int) standin.ClientCall {
	h := http.Header{"Api-Key": {"bench-not-a-key"}, "Content-Type": {"application/json"}}
	if t > 0 {
		h.Set("Session-Id", s.id(t-1))
	}
	var body strings.Builder
	fmt.Fprintf(&body, `{"model":"gpt-4o","messages":[{"role":"system","content":"conversation %d"}`, s.n)
	for k := range t {
		fmt.Fprintf(&body, `,{"role":"user","content":"question %d"},{"role":"assistant","content":"answer %d"}`, k, k)
	}
	fmt.Fprintf(&body, `,{"role":"user","content":"question %d"}]}`, t)
	return standin.ClientCall{Ingress: s.ingress, Headers: h, Body: []byte(body.String()), SessionID: s.id(t)}
}

// home is the session's router: its first keyed call's; "" when that
// call failed.
func (s *affSession) home() string {
	if len(s.routers) < 2 {
		return ""
	}
	return s.routers[1]
}

// ownRouters sets each session's own router in p, and, when out is not
// "", its own in p without out. The broker's decision core says it, as a
// replica with nothing in flight and every router healthy would choose,
// for the key gecholog's session header gives.
func ownRouters(ctx context.Context, p broker.Pool, out string, sessions []*affSession) error {
	own := func(p broker.Pool, set func(*affSession, string)) error {
		br, err := broker.New(broker.Config{Pools: []broker.Pool{p}, Policy: broker.Policy{DisabledTime: time.Minute}})
		if err != nil {
			return err
		}
		defer br.Close(ctx)
		members := br.Members()
		for _, s := range sessions {
			headers := fmt.Appendf(nil, `{%q:[%q]}`, gecholog.DefaultSessionHeader, s.id(0))
			key, problem := gecholog.SessionKey(headers, gecholog.DefaultSessionHeader, true)
			if problem != gecholog.KeyOK {
				return fmt.Errorf("session id %s: no key (%v)", s.id(0), problem)
			}
			id := br.ChooseSession([]byte(p.Ingress), key)
			if id < 0 {
				return fmt.Errorf("pool %s chose no router", p.Ingress)
			}
			set(s, members[id])
			br.Report([]byte(members[id]), http.StatusOK, 0) // no longer in flight
		}
		return nil
	}
	if err := own(p, func(s *affSession, r string) { s.own = r }); err != nil {
		return err
	}
	if out == "" {
		return nil
	}
	q := p
	q.Routers = slices.DeleteFunc(slices.Clone(p.Routers), func(r broker.Router) bool { return r.Path == out })
	return own(q, func(s *affSession, r string) { s.after = r })
}

func newSessions(ingress string, from, n, calls int) []*affSession {
	ss := make([]*affSession, n)
	for i := range ss {
		ss[i] = &affSession{n: from + i, ingress: ingress, routers: make([]string, calls)}
	}
	return ss
}

// affinityRound makes call t of every session (round t), in a random
// order, o.callers at once over the gateways' connections; the queue
// group spreads them over the replicas. It returns the calls that failed.
func (b *bench) affinityRound(ctx context.Context, gws []standin.Gateway, sessions []*affSession, t int) (failed int) {
	order := rand.Perm(len(sessions))
	var next, bad atomic.Int64
	var wg sync.WaitGroup
	for w := range min(b.o.callers, len(sessions)) {
		gw := gws[w%len(gws)]
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= len(order) {
					return
				}
				s := sessions[order[i]]
				res, err := gw.DoCall(ctx, s.call(t))
				if err != nil || res.Status != http.StatusOK {
					bad.Add(1)
					continue
				}
				s.routers[t] = res.Router
			}
		})
	}
	wg.Wait()
	return int(bad.Load())
}

func (b *bench) affinityMode(ctx context.Context) error {
	o := b.o
	ctx, cancel := context.WithTimeout(ctx, affinityTimeout)
	defer cancel()
	bin, _, cs, done, err := b.fleetSetup(ctx)
	if err != nil {
		return err
	}
	defer done()
	session := broker.Affinity{Session: true, LoadFactor: o.loadFactor}
	aff, rnd, move := affinityPool("aff", "", session), affinityPool("rnd", "random", broker.Affinity{}), affinityPool("move", "", session)
	pools := []broker.Pool{aff, rnd, move}
	if _, _, err := (configWriter{cs}).write(ctx, pools); err != nil {
		return fmt.Errorf("write the fleet's configuration: %w", err)
	}
	ups := &standin.Upstreams{}
	defer ups.Close()
	caches := map[string]*promptCache{}
	for _, p := range pools {
		for _, r := range p.Routers {
			c := &promptCache{}
			caches[r.Path] = c
			if err := ups.Add(r.Path, c); err != nil {
				return err
			}
		}
	}
	procs, stop, err := b.startProcs(ctx, bin, o.replicas)
	if err != nil {
		return err
	}
	defer stop()
	conns, closeConns, err := b.connectN(o.conns)
	if err != nil {
		return err
	}
	defer closeConns()
	client := standin.NewClient(30 * time.Second)
	defer client.CloseIdleConnections()
	var gws []standin.Gateway
	for _, c := range conns {
		gws = append(gws, standin.Gateway{NC: c, Subject: b.subject, Upstreams: ups.URLs, Client: client,
			Logger: b.loggerSubject(), Timeout: labTimeout(o.timeout), LogAnswers: true})
	}

	n, calls := o.sessions, o.sessionCalls
	fmt.Fprintf(b.out, "%d replica processes of the broker binary (%s); pools in the fleet's configuration, each over a (weight 2), b (1) and c (1):\n",
		o.replicas, bin)
	fmt.Fprintf(b.out, "%s and %s with \"affinity\": \"session\" (else random), %s random.\n", aff.Ingress, move.Ingress, rnd.Ingress)
	fmt.Fprintf(b.out, "A session is %d calls one after the other, as a client of gecholog makes them: the first without Session-Id\n", calls)
	fmt.Fprintf(b.out, "(gecholog starts the session), each next one with the Session-Id the previous answer gave. Each call is a request context\n")
	fmt.Fprintf(b.out, "with ingress_headers (Api-Key, Content-Type, Session-Id), the upstream call, the response context, and the transaction\n")
	fmt.Fprintf(b.out, "(session_id, the upstream's answer with its usage) on %s. Round t makes call t of every session, in a random\n", b.loggerSubject())
	fmt.Fprintf(b.out, "order, %d at once over %d connections; the queue group spreads them over the replicas. A session's router is the router\n", o.callers, o.conns)
	fmt.Fprintf(b.out, "of its first keyed call (its second).\n\n")

	start := time.Now()
	// All healthy, with and without affinity in the same rounds.
	affs, rnds := newSessions(aff.Ingress, 0, n, calls), newSessions(rnd.Ingress, n, n, calls)
	if err := ownRouters(ctx, aff, "", affs); err != nil {
		return err
	}
	both := append(append([]*affSession{}, affs...), rnds...)
	failed := 0
	for t := range calls {
		failed += b.affinityRound(ctx, gws, both, t)
	}
	if ctx.Err() != nil {
		return b.affinityTimedOut(ctx)
	}
	b.affinityHealthy(aff, affs, calls)

	// A router disabled by hand mid-run.
	moves := newSessions(move.Ingress, 2*n, n, calls)
	out := move.Routers[0].Path
	if err := ownRouters(ctx, move, out, moves); err != nil {
		return err
	}
	before := max(2, calls/2)
	for t := range before {
		failed += b.affinityRound(ctx, gws, moves, t)
	}
	t0 := time.Now()
	var discard strings.Builder
	err = ops.DisableRouter(ctx, ops.Target{NATS: natsconn.Settings{Servers: b.url, Token: o.token}, Bucket: b.bucket, Pools: pools},
		ops.Disable{Router: out, Reason: "broker-bench -mode affinity", By: "broker-bench"}, func(string) string { return "" }, &discard)
	if err != nil {
		return fmt.Errorf("disable %s: %w", out, err)
	}
	var seen time.Duration
	for _, p := range procs {
		at, ok := p.waitDisabled(ctx, out, applyTimeout)
		if !ok {
			return fmt.Errorf("replica %s did not log disabling %s within %v", p.id, out, applyTimeout)
		}
		seen = max(seen, at.Sub(t0))
	}
	for t := before; t < calls; t++ {
		failed += b.affinityRound(ctx, gws, moves, t)
	}
	if ctx.Err() != nil {
		return b.affinityTimedOut(ctx)
	}
	b.affinityMoved(move, moves, out, before, calls, seen)
	b.affinityCaching(aff, rnd, caches, calls)
	fmt.Fprintf(b.out, "\ncalls %d in %v, failed (no answer or not 200) %d (target 0: %s)\n",
		3*n*calls, time.Since(start).Round(time.Millisecond), failed, targetVerdict(failed == 0))
	return nil
}

func (b *bench) affinityTimedOut(ctx context.Context) error {
	if ctx.Err() == context.DeadlineExceeded {
		return fmt.Errorf("-mode affinity did not finish within %v: give fewer -sessions or -session-calls", affinityTimeout)
	}
	return nil
}
