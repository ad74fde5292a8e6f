package standin_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matryer/is"
	"github.com/nats-io/nats.go"

	"github.com/gecholog/broker/internal/standin"
	"github.com/gecholog/broker/internal/testutil/natstest"
)

// fakeBroker answers every request context on subject with router and
// keeps the response contexts it is sent.
type fakeBroker struct {
	mu       sync.Mutex
	requests int
	reports  []map[string]json.RawMessage
}

func startFakeBroker(t *testing.T, nc *nats.Conn, subject, router string) *fakeBroker {
	t.Helper()
	f := &fakeBroker{}
	_, err := nc.Subscribe(subject, func(m *nats.Msg) {
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(m.Data, &fields); err != nil {
			t.Errorf("processor message %q: %v", m.Data, err)
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		if _, ok := fields["egress_status_code"]; ok {
			f.reports = append(f.reports, fields)
			_ = m.Respond(nil)
			return
		}
		f.requests++
		_ = m.Respond([]byte(`{"gl_path":"` + router + `"}`))
	})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestGatewayMakesGechologsCallsAndLogsTheTransaction(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	nc := natstest.Connect(t, s)
	brk := startFakeBroker(t, nc, "coburn.gl.broker", "/azure/ptu/")
	logged := make(chan *nats.Msg, 10)
	sub, err := nc.ChanSubscribe("coburn.gl.logger", logged)
	is.NoErr(err)
	defer sub.Unsubscribe()
	ups := &standin.Upstreams{}
	is.NoErr(ups.Add("/azure/ptu/", &standin.LLM{Quota: 1, Window: time.Hour, Latency: standin.Fixed(5 * time.Millisecond)}))
	client := standin.NewClient(10 * time.Second)
	defer func() { client.CloseIdleConnections(); ups.Close() }()
	var statuses standin.Statuses
	gw := standin.Gateway{NC: nc, Subject: "coburn.gl.broker", Upstreams: ups.URLs, Client: client,
		Logger: "coburn.gl.logger", Statuses: &statuses}

	first, err := gw.Do(context.Background(), "/azure/")
	is.NoErr(err)
	is.Equal(first.Router, "/azure/ptu/") // the broker's choice
	is.Equal(first.Status, 200)
	is.True(first.Reported)                         // the response context was sent
	is.True(first.Upstream() >= 5*time.Millisecond) // the upstream's time
	second, err := gw.Do(context.Background(), "/azure/")
	is.NoErr(err)
	is.Equal(second.Status, http.StatusTooManyRequests) // the client gets the upstream's 429: gecholog never retries
	is.Equal(statuses.Count("/azure/ptu/", 429), 1)
	is.Equal(statuses.Count("", 0), 2)

	brk.mu.Lock()
	is.Equal(brk.requests, 2)
	is.Equal(len(brk.reports), 2)
	report := brk.reports[1]
	brk.mu.Unlock()
	is.Equal(string(report["gl_path"]), `"/azure/ptu/"`)
	is.Equal(string(report["egress_status_code"]), "429") // a JSON number
	var headers map[string][]string
	is.NoErr(json.Unmarshal(report["inbound_headers"], &headers))
	is.Equal(headers["Retry-After"], []string{second.Headers.Get("Retry-After")}) // canonical names, values as lists
	is.Equal(headers["X-Ratelimit-Remaining-Requests"], []string{"0"})

	for _, want := range []standin.Result{first, second} {
		select {
		case m := <-logged:
			var tx struct {
				Request struct {
					GLPath   string `json:"gl_path"`
					Original string `json:"original_gl_path"`
				} `json:"request"`
				Response struct {
					GLPath  string              `json:"gl_path"`
					Status  int                 `json:"egress_status_code"`
					Headers map[string][]string `json:"inbound_headers"`
					Timer   struct {
						Start, Stop time.Time
					} `json:"outbound_inbound_timer"`
				} `json:"response"`
			}
			is.NoErr(json.Unmarshal(m.Data, &tx))
			is.Equal(tx.Request.Original, "/azure/")
			is.Equal(tx.Response.GLPath, "/azure/ptu/")
			is.Equal(tx.Response.Status, want.Status)
			is.True(tx.Response.Timer.Start.Equal(want.Start)) // the upstream's own times
			is.Equal(tx.Response.Timer.Stop.Sub(tx.Response.Timer.Start), want.Upstream())
			is.Equal(tx.Response.Headers["X-Ratelimit-Limit-Requests"], []string{"1"})
		case <-time.After(10 * time.Second):
			t.Fatal("no transaction logged")
		}
	}
}

func TestGatewayLosesTheShareOfReportsAsked(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	nc := natstest.Connect(t, s)
	brk := startFakeBroker(t, nc, "broker", "/azure/a/")
	ups := &standin.Upstreams{}
	is.NoErr(ups.Add("/azure/a/", &standin.LLM{}))
	client := standin.NewClient(10 * time.Second)
	defer func() { client.CloseIdleConnections(); ups.Close() }()
	gw := standin.Gateway{NC: nc, Subject: "broker", Upstreams: ups.URLs, Client: client, LoseReports: 1}
	var mu sync.Mutex
	results := 0
	gw.Run(context.Background(), "/azure/", 20, 4, func(r standin.Result, err error) {
		is.NoErr(err)
		is.True(!r.Reported) // every report lost
		mu.Lock()
		results++
		mu.Unlock()
	})
	is.Equal(results, 20) // n calls, made concurrently
	brk.mu.Lock()
	defer brk.mu.Unlock()
	is.Equal(brk.requests, 20)
	is.Equal(len(brk.reports), 0)
}

// A client call carries what gecholog passes on: the client's headers to
// the request processor as ingress_headers (lists of values), its body
// to the upstream, and its session id and the upstream's own answer to
// the transaction log.
func TestGatewayPassesTheClientsHeadersBodyAndSessionOn(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	nc := natstest.Connect(t, s)
	requests := make(chan []byte, 4)
	_, err := nc.Subscribe("broker", func(m *nats.Msg) {
		if !strings.Contains(string(m.Data), "egress_status_code") {
			requests <- m.Data
			_ = m.Respond([]byte(`{"gl_path":"/azure/a/"}`))
			return
		}
		_ = m.Respond(nil)
	})
	is.NoErr(err)
	logged := make(chan *nats.Msg, 4)
	sub, err := nc.ChanSubscribe("logger", logged)
	is.NoErr(err)
	defer sub.Unsubscribe()
	bodies := make(chan string, 4)
	ups := &standin.Upstreams{}
	is.NoErr(ups.Add("/azure/a/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		bodies <- string(b)
		_, _ = w.Write([]byte(`{"usage":{"prompt_tokens":1280,"prompt_tokens_details":{"cached_tokens":1024}}}`))
	})))
	client := standin.NewClient(10 * time.Second)
	defer func() { client.CloseIdleConnections(); ups.Close() }()
	gw := standin.Gateway{NC: nc, Subject: "broker", Upstreams: ups.URLs, Client: client, Logger: "logger", LogAnswers: true}

	res, err := gw.DoCall(context.Background(), standin.ClientCall{Ingress: "/azure/",
		Headers:   http.Header{"Session-Id": {"AAA00001_1696681410696216000_3_0"}, "Api-Key": {"k"}},
		Body:      []byte(`{"messages":[{"role":"user","content":"hi"}]}`),
		SessionID: "AAA00001_1696681410696216000_3_1"})
	is.NoErr(err)
	is.Equal(res.Router, "/azure/a/")
	var req struct {
		GLPath  string              `json:"gl_path"`
		Headers map[string][]string `json:"ingress_headers"`
	}
	is.NoErr(json.Unmarshal(<-requests, &req))
	is.Equal(req.GLPath, "/azure/")
	is.Equal(req.Headers["Session-Id"], []string{"AAA00001_1696681410696216000_3_0"}) // the header the client sent back, as a list
	is.Equal(<-bodies, `{"messages":[{"role":"user","content":"hi"}]}`)               // the client's body, forwarded
	select {
	case m := <-logged:
		var tx struct {
			SessionID string `json:"session_id"`
			Response  struct {
				Answer struct {
					Usage struct {
						Details struct {
							Cached int `json:"cached_tokens"`
						} `json:"prompt_tokens_details"`
					} `json:"usage"`
				} `json:"inbound_payload"`
			} `json:"response"`
		}
		is.NoErr(json.Unmarshal(m.Data, &tx))
		is.Equal(tx.SessionID, "AAA00001_1696681410696216000_3_1") // the call's session id at the root
		is.Equal(tx.Response.Answer.Usage.Details.Cached, 1024)    // the upstream's own answer
	case <-time.After(10 * time.Second):
		t.Fatal("no transaction logged")
	}

	// Without headers, the request context is gl_path alone, as for a
	// processor whose input_fields_include does not name ingress_headers.
	_, err = gw.Do(context.Background(), "/azure/")
	is.NoErr(err)
	is.Equal(string(<-requests), `{"gl_path":"/azure/"}`)
}
