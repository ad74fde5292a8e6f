package standin

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
)

// Gateway makes client calls as gecholog does, in its order: the request
// context to the broker, the call to the chosen router's upstream, the
// response context with the status the client got and the upstream's
// headers, and then the whole transaction published on the logger subject.
// Its methods are safe for concurrent use: make as many calls at once as
// you like.
type Gateway struct {
	NC        *nats.Conn
	Subject   string            // the broker's service_bus_topic
	Upstreams map[string]string // router → upstream URL
	// Client makes the upstream calls (nil: http.DefaultClient, which
	// keeps only two idle connections per upstream: give NewClient's for
	// many calls at once).
	Client *http.Client
	// Logger is gecholog's topic_exact_logger, where each call's
	// transaction is published after its response context; none when
	// empty.
	Logger string
	// Timeout bounds each processor call (default 2 s; gecholog's seed
	// config waits 50 ms, but a race-instrumented test on a busy machine
	// needs more).
	Timeout time.Duration
	// LoseReports is the share of calls whose response context is never
	// sent, as when gecholog's processor call times out or the replica that
	// took it dies: the broker never hears the call ended.
	LoseReports float64
	// Statuses, when set, counts the status each client got, by router.
	Statuses *Statuses
	// Payload is the size in bytes of the prompt and of the completion
	// each in the transaction log, where gecholog logs both whole.
	Payload int
	// Answer, when set, gives each call's answer as the transaction logs
	// it in inbound_payload (see Finished.Answer), such as one whose usage
	// says the tokens the call used; nil: a completion of Payload bytes.
	Answer func(Result) json.RawMessage
	// LogAnswers logs the upstream's own answer in inbound_payload, as
	// gecholog does, when it is JSON of at most MaxAnswer bytes (Answer,
	// when set, still wins); false: Payload's completion.
	LogAnswers bool
	// Tails, when set, gives the client its answer as soon as the
	// upstream's is in, as gecholog does: its response processors are
	// async, so it answers the client and then sends the response
	// context and, once that is answered, publishes the transaction. A
	// client in a closed loop makes its next call meanwhile. The response
	// context and the transaction go on a goroutine that Tails counts;
	// whoever set it waits for it. nil: a call returns once both are
	// done.
	Tails *Tails
}

// Tails counts the response contexts and transactions a gateway with
// Tails still has to send, and those that failed.
type Tails struct {
	wg     sync.WaitGroup
	mu     sync.Mutex
	failed int
}

// Wait waits for every response context and transaction started, and
// returns how many failed.
func (t *Tails) Wait() (failed int) {
	t.wg.Wait()
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failed
}

// MaxAnswer bounds the upstream answer a gateway with LogAnswers keeps.
const MaxAnswer = 64 << 10

// ClientCall is one client call: what the client sends, and the session id
// gecholog gives the call.
type ClientCall struct {
	Ingress string
	// Headers are the client's headers, which gecholog hands the request
	// processor as ingress_headers (each a list of values) when its
	// input_fields_include names them; nil: none are sent.
	Headers http.Header
	// Body is the client's payload, which gecholog forwards to the
	// upstream; nil: a short chat completion request.
	Body []byte
	// SessionID is the session id gecholog logs at the transaction's
	// root (GATEWAYID_UNIXNANO_COUNT_TRANSACTION); "": a fixed one.
	SessionID string
}

// Result is one client call as the gateway made it.
type Result struct {
	Ingress string
	// Router is the router the call used: the broker's choice, or the
	// ingress when it answered empty.
	Router string
	// Status is what the client got: the upstream's, or gecholog's own
	// when the upstream could not be reached (see GECHOLOG.md).
	Status int
	// Start and Stop bound the upstream call, as gecholog's
	// outbound_inbound_timer does.
	Start, Stop time.Time
	// Headers are the upstream's answer's, with canonical names.
	Headers http.Header
	// Reported says the response context was sent.
	Reported bool
	// SessionID is the call's, as its transaction logs it.
	SessionID string
	// Answer is the upstream's answer, kept by a gateway with LogAnswers
	// when it is JSON of at most MaxAnswer bytes.
	Answer json.RawMessage
}

// Upstream is the upstream call's time.
func (r Result) Upstream() time.Duration { return r.Stop.Sub(r.Start) }

// NewClient is an HTTP client for a gateway making many calls at once to
// loopback upstreams: it keeps a connection per call in flight for reuse,
// as gecholog's does, instead of opening one per call.
func NewClient(timeout time.Duration) *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns, t.MaxIdleConnsPerHost = 4096, 1024
	return &http.Client{Timeout: timeout, Transport: t}
}

// Call makes one client call to ingress and says which router served it
// and the status the client got.
func (g Gateway) Call(ingress string) (router string, status int, err error) {
	r, err := g.Do(context.Background(), ingress)
	return r.Router, r.Status, err
}

// Do makes one client call to ingress. It fails when a processor call is
// not answered: gecholog would carry on (on the ingress router's outbound
// after a request context, regardless after a response context), but for a
// test that is the broker failing. The result is filled in as far as the
// call got.
func (g Gateway) Do(ctx context.Context, ingress string) (Result, error) {
	return g.DoCall(ctx, ClientCall{Ingress: ingress})
}

// DoCall makes the client call c, as Do makes one to its ingress: the
// request context carries the client's headers as ingress_headers, the
// upstream gets its body, and the transaction logs its session id.
func (g Gateway) DoCall(ctx context.Context, c ClientCall) (Result, error) {
	ingress := c.Ingress
	res := Result{Ingress: ingress, Router: ingress, SessionID: c.SessionID}
	timeout := g.Timeout
	if timeout <= 0 {
		timeout = 2 * time.Second
	}
	request := fmt.Appendf(nil, `{"gl_path":%q}`, ingress)
	if c.Headers != nil {
		var err error
		request, err = json.Marshal(struct {
			GLPath  string      `json:"gl_path"`
			Headers http.Header `json:"ingress_headers"`
		}{ingress, c.Headers})
		if err != nil {
			return res, err
		}
	}
	reqCtx, cancel := context.WithTimeout(ctx, timeout)
	msg, err := g.NC.RequestWithContext(reqCtx, g.Subject, request)
	cancel()
	if err != nil {
		return res, fmt.Errorf("request context: %w", err)
	}
	if len(msg.Data) > 0 {
		var r struct {
			GLPath string `json:"gl_path"`
		}
		if err := json.Unmarshal(msg.Data, &r); err != nil {
			return res, fmt.Errorf("broker reply %q: %w", msg.Data, err)
		}
		res.Router = r.GLPath
	}
	g.upstream(ctx, &res, c.Body)
	g.Statuses.Add(res.Router, res.Status)
	if g.Tails != nil {
		g.Tails.wg.Go(func() {
			if _, err := g.after(ctx, res); err != nil {
				g.Tails.mu.Lock()
				g.Tails.failed++
				g.Tails.mu.Unlock()
			}
		})
		return res, nil
	}
	return g.after(ctx, res)
}

// after sends res's response context, then publishes its transaction.
func (g Gateway) after(ctx context.Context, res Result) (Result, error) {
	timeout := cmp.Or(g.Timeout, 2*time.Second)
	if g.LoseReports == 0 || rand.Float64() >= g.LoseReports {
		report, err := json.Marshal(struct {
			GLPath  string      `json:"gl_path"`
			Status  int         `json:"egress_status_code"`
			Headers http.Header `json:"inbound_headers"`
		}{res.Router, res.Status, res.Headers})
		if err != nil {
			return res, err
		}
		respCtx, cancel := context.WithTimeout(ctx, timeout)
		_, err = g.NC.RequestWithContext(respCtx, g.Subject, report)
		cancel()
		if err != nil {
			// gecholog logs the processor's error in the transaction,
			// which it publishes all the same.
			return res, errors.Join(fmt.Errorf("response context: %w", err), g.log(res))
		}
		res.Reported = true
	}
	return res, g.log(res)
}

// log publishes res's transaction on the logger subject, if there is one.
func (g Gateway) log(res Result) error {
	if g.Logger == "" {
		return nil
	}
	if err := g.NC.Publish(g.Logger, g.transaction(res)); err != nil {
		return fmt.Errorf("transaction log: %w", err)
	}
	return nil
}

// transaction is res as gecholog logs it.
func (g Gateway) transaction(res Result) []byte {
	h := make(map[string]string, len(res.Headers))
	for k, v := range res.Headers {
		if len(v) > 0 {
			h[k] = v[0]
		}
	}
	f := Finished{Ingress: res.Ingress, Router: res.Router, Status: res.Status,
		Start: res.Start, Latency: res.Upstream(), Headers: h, Payload: g.Payload, Session: res.SessionID}
	switch {
	case g.Answer != nil:
		f.Answer = g.Answer(res)
	case g.LogAnswers && res.Answer != nil:
		f.Answer = res.Answer
	}
	return Transaction(f)
}

// upstream makes the call to res.Router's upstream and records how it went.
func (g Gateway) upstream(ctx context.Context, res *Result, body []byte) {
	if body == nil {
		body = []byte(`{"messages":[{"role":"user","content":"Say ok."}]}`)
	}
	client := g.Client
	if client == nil {
		client = http.DefaultClient
	}
	res.Headers = http.Header{}
	res.Start = time.Now()
	defer func() { res.Stop = time.Now() }()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, g.Upstreams[res.Router],
		bytes.NewReader(body))
	if err != nil {
		res.Status = http.StatusInternalServerError
		return
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		res.Status = unreachable(err)
		return
	}
	if g.LogAnswers {
		answer, rerr := io.ReadAll(io.LimitReader(resp.Body, MaxAnswer+1))
		if rerr == nil && len(answer) <= MaxAnswer && json.Valid(answer) {
			res.Answer = answer
		}
	}
	// Read to the end, so that the connection is used again.
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	res.Status, res.Headers = resp.StatusCode, resp.Header
	if err != nil {
		res.Status = unreachable(err)
	}
}

// unreachable is what gecholog answers when the upstream cannot be
// reached: 504 on a time-out, 502 when the connection is refused, 500 for
// other transport errors.
func unreachable(err error) int {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return http.StatusGatewayTimeout
	case errors.Is(err, syscall.ECONNREFUSED):
		return http.StatusBadGateway
	}
	return http.StatusInternalServerError
}

// Run makes n calls to ingress, at most concurrency at once, each caller
// making its calls one after the other, and passes each result to each
// (concurrently; nil: none). It returns early when ctx ends.
func (g Gateway) Run(ctx context.Context, ingress string, n, concurrency int, each func(Result, error)) {
	var next sync.Mutex
	left := n
	var wg sync.WaitGroup
	for range max(min(concurrency, n), 1) {
		wg.Go(func() {
			for ctx.Err() == nil {
				next.Lock()
				if left == 0 {
					next.Unlock()
					return
				}
				left--
				next.Unlock()
				r, err := g.Do(ctx, ingress)
				if each != nil {
					each(r, err)
				}
			}
		})
	}
	wg.Wait()
}
