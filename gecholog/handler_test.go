package gecholog_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/gecholog"
)

// memStore is an in-memory broker.Store with revisions and
// compare-and-set, which keeps what was written.
type memStore struct {
	mu     sync.Mutex
	rev    uint64
	last   map[string]broker.Entry
	live   map[string]bool
	writes int
}

func newMemStore() *memStore {
	return &memStore{last: map[string]broker.Entry{}, live: map[string]bool{}}
}

func (s *memStore) Latest(_ context.Context, router string) (broker.Entry, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last[router], s.live[router], nil
}

func (s *memStore) Update(_ context.Context, r broker.Record, rev uint64) (uint64, error) {
	return s.write(r, rev, true)
}

func (s *memStore) Release(_ context.Context, memo broker.Record, rev uint64) (uint64, error) {
	return s.write(memo, rev, false)
}

// Announce tells nobody: a handler test runs one replica.
func (s *memStore) Announce(broker.Record) {}

func (s *memStore) write(r broker.Record, rev uint64, live bool) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.last[r.Router].Revision != rev {
		return 0, broker.ErrConflict
	}
	s.rev++
	s.writes++
	s.last[r.Router] = broker.Entry{Record: r, Revision: s.rev}
	s.live[r.Router] = live
	return s.rev, nil
}

// entry returns router's live record.
func (s *memStore) entry(router string) (broker.Entry, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last[router], s.live[router]
}

func (s *memStore) writeCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.writes
}

// logs is a concurrency-safe log sink.
type logs struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logs) Write(p []byte) (int, error) { l.mu.Lock(); defer l.mu.Unlock(); return l.buf.Write(p) }

func (l *logs) count(msg string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.buf.String(), `"msg":"`+msg+`"`)
}

// newHandler returns a handler for a broker of the default pools with
// store (nil: local mode), both logging to the returned sink. The broker
// is closed when the test ends.
func newHandler(t *testing.T, store broker.Store) (*gecholog.Handler, *broker.Broker, *logs) {
	t.Helper()
	l := &logs{}
	log := slog.New(slog.NewJSONHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg := broker.Config{
		Pools:  broker.DefaultPools(),
		Policy: broker.Policy{DisabledTime: time.Hour},
		ID:     "replica-1",
		Logger: log,
		Store:  store,
	}
	b, err := broker.New(cfg)
	if err != nil {
		t.Fatalf("new broker: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		b.Close(ctx)
	})
	return gecholog.NewHandler(b, log), b, l
}

func request(path string) []byte { return []byte(`{"gl_path":"` + path + `"}`) }

func response(path string, status int) []byte {
	return fmt.Appendf(nil, `{"gl_path":%q,"egress_status_code":%d}`, path, status)
}

// chosen decodes a request-context reply; "" for an empty one. Call it
// from the test's goroutine only.
func chosen(t *testing.T, reply []byte) string {
	t.Helper()
	if len(reply) == 0 {
		return ""
	}
	var m struct {
		GLPath string `json:"gl_path"`
	}
	if err := json.Unmarshal(reply, &m); err != nil {
		t.Fatalf("reply %q: %v", reply, err)
	}
	return m.GLPath
}

func TestIngressRequestIsAnsweredWithARouterOfItsPool(t *testing.T) {
	is := is.New(t)
	h, _, _ := newHandler(t, nil)
	members := map[string]bool{"/azure/gpt35turbo/": true, "/azure/gpt4/": true, "/azure/dud/": true}
	for range 100 {
		reply := h.Handle(request("/azure/"))
		router := chosen(t, reply)
		is.True(members[router])                                // one of the pool's routers
		is.Equal(string(reply), string(gecholog.Reply(router))) // in the reply's own words
	}
}

func TestAnythingButAnIngressRequestOrFailureGetsAnEmptyReplyAndChangesNothing(t *testing.T) {
	cases := map[string]string{
		"member router called directly": `{"gl_path":"/azure/gpt4/"}`,
		"unknown path":                  `{"gl_path":"/openai/"}`,
		"empty path":                    `{"gl_path":""}`,
		"malformed JSON":                `{"gl_path":"/azure/"`,
		"not JSON":                      `hello`,
		"empty message":                 ``,
		"JSON array":                    `["/azure/"]`,
		"JSON null":                     `null`,
		"missing gl_path":               `{"egress_status_code":502}`,
		"gl_path a number":              `{"gl_path":42}`,
		"gl_path an object":             `{"gl_path":{"p":"/azure/dud/"}}`,
		"status a string":               `{"gl_path":"/azure/dud/","egress_status_code":"502"}`,
		"status a float":                `{"gl_path":"/azure/dud/","egress_status_code":502.5}`,
		"status out of range":           `{"gl_path":"/azure/dud/","egress_status_code":5020}`,
		"status negative":               `{"gl_path":"/azure/dud/","egress_status_code":-502}`,
		"status huge":                   `{"gl_path":"/azure/dud/","egress_status_code":1e400}`,
		"failure of the ingress itself": `{"gl_path":"/azure/","egress_status_code":502}`,
		"failure of an unknown router":  `{"gl_path":"/openai/x/","egress_status_code":502}`,
		"success":                       `{"gl_path":"/azure/dud/","egress_status_code":200}`,
	}
	for name, msg := range cases {
		t.Run(name, func(t *testing.T) {
			is := is.New(t)
			store := newMemStore()
			h, b, _ := newHandler(t, store)
			is.Equal(len(h.Handle([]byte(msg))), 0)                // empty reply
			is.Equal(len(b.Routers("/azure/")), 3)                 // no router disabled
			is.True(chosen(t, h.Handle(request("/azure/"))) != "") // still serving
			b.Close(context.Background())                          // waits for any background write
			is.Equal(store.writeCount(), 0)                        // nothing written
		})
	}
}

func TestMalformedMessagesAreLoggedOnceNotPerMessage(t *testing.T) {
	is := is.New(t)
	h, _, l := newHandler(t, nil)
	for range 1000 {
		h.Handle([]byte("garbage"))
	}
	is.Equal(l.count("ignoring malformed processor message"), 1)
	is.Equal(h.Malformed(), uint64(1000)) // every one counted
}

func TestResponseContextIsAnsweredEmptyAndFailuresDisable(t *testing.T) {
	for _, tc := range []struct {
		status  int
		disable bool
	}{
		{200, false}, {201, false}, {204, false}, {301, false}, {304, false},
		{400, false}, {402, false}, {405, false}, {409, false}, {413, false}, {422, false},
		{401, true}, {403, true}, {404, true}, {408, true}, {429, true},
		{500, true}, {502, true}, {503, true}, {504, true}, {599, true},
	} {
		t.Run(fmt.Sprint(tc.status), func(t *testing.T) {
			is := is.New(t)
			h, b, _ := newHandler(t, nil)
			is.Equal(len(h.Handle(response("/azure/dud/", tc.status))), 0) // the response context is answered empty
			disabled := len(b.Routers("/azure/")) == 2
			is.Equal(disabled, tc.disable) // the status reached the broker
		})
	}
}

func TestRetryAfterOfA429Or503SetsTheDisable(t *testing.T) {
	for _, tc := range []struct {
		name string
		msg  string
		want time.Duration
	}{
		{"429 with Retry-After", `{"gl_path":"/azure/dud/","egress_status_code":429,"inbound_headers":{"Retry-After":["30"]}}`, 30 * time.Second},
		{"503 with Retry-After", `{"gl_path":"/azure/dud/","egress_status_code":503,"inbound_headers":{"retry-after":["90"]}}`, 90 * time.Second},
		{"429 without", `{"gl_path":"/azure/dud/","egress_status_code":429,"inbound_headers":{"Content-Type":["text/plain"]}}`, time.Hour},
		{"502 ignores it", `{"gl_path":"/azure/dud/","egress_status_code":502,"inbound_headers":{"Retry-After":["30"]}}`, time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			is := is.New(t)
			store := newMemStore()
			h, b, _ := newHandler(t, store)
			is.Equal(len(h.Handle([]byte(tc.msg))), 0)
			b.Close(context.Background()) // waits for the background write
			e, live := store.entry("/azure/dud/")
			is.True(live)                                      // disabled
			is.Equal(e.Record.Until.Sub(e.Record.At), tc.want) // for as long as the upstream asked, or DisabledTime
		})
	}
}

// A PTU deployment's 429 says Retry-After in whole seconds, rounded up, and
// x-ratelimit-reset-requests to the millisecond: a disable of the rounded
// Retry-After keeps tier 0 out up to a second after its quota is back,
// and a quota window that opens with the first call after the last ended
// starts that much later, each time (issue 23).
func TestA429ThatSaysNoRequestIsLeftIsDisabledUntilItsPreciseReset(t *testing.T) {
	for _, tc := range []struct {
		name     string
		headers  string
		min, max time.Duration
	}{
		{"the reset, sooner than Retry-After", `{"Retry-After":["5"],"X-Ratelimit-Remaining-Requests":["0"],"X-Ratelimit-Reset-Requests":["4.2s"]}`,
			4150 * time.Millisecond, 4200 * time.Millisecond},
		{"no sooner than a second", `{"Retry-After":["1"],"X-Ratelimit-Remaining-Requests":["0"],"X-Ratelimit-Reset-Requests":["200ms"]}`,
			time.Second, time.Second},
		{"Retry-After, sooner than the reset", `{"Retry-After":["3"],"X-Ratelimit-Remaining-Requests":["0"],"X-Ratelimit-Reset-Requests":["6s"]}`,
			3 * time.Second, 3 * time.Second},
		{"Retry-After, when requests are left (tokens ran out)", `{"Retry-After":["5"],"X-Ratelimit-Remaining-Requests":["7"],"X-Ratelimit-Reset-Requests":["4.2s"]}`,
			5 * time.Second, 5 * time.Second},
		{"the later of two counts that ran out", `{"Retry-After":["9"],"X-Ratelimit-Remaining-Requests":["0"],"X-Ratelimit-Reset-Requests":["2s"],"X-Ratelimit-Remaining-Tokens":["0"],"X-Ratelimit-Reset-Tokens":["6.5s"]}`,
			6450 * time.Millisecond, 6500 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			is := is.New(t)
			store := newMemStore()
			h, b, _ := newHandler(t, store)
			is.Equal(len(h.Handle([]byte(`{"gl_path":"/azure/dud/","egress_status_code":429,"inbound_headers":`+tc.headers+`}`))), 0)
			b.Close(context.Background()) // waits for the background write
			e, live := store.entry("/azure/dud/")
			is.True(live) // disabled
			d := e.Record.Until.Sub(e.Record.At)
			if d < tc.min || d > tc.max {
				t.Fatalf("disabled for %v, want %v to %v", d, tc.min, tc.max)
			}
		})
	}
}

func TestHandlerCountsMalformedMessagesAndPassesTheRestToTheBroker(t *testing.T) {
	is := is.New(t)
	h, b, _ := newHandler(t, nil)
	for range 10 {
		h.Handle(request("/azure/"))
	}
	h.Handle(request("/other/"))
	h.Handle([]byte("nope"))
	h.Handle(response("/azure/gpt4/", 200))
	h.Handle(response("/azure/dud/", 502))
	h.Handle(response("/azure/dud/", 502))

	is.Equal(h.Malformed(), uint64(1))
	s := b.Stats()
	is.Equal(s.Calls[broker.Chosen], uint64(10))
	is.Equal(s.Calls[broker.NotIngress], uint64(1))
	is.Equal(s.Calls[broker.Succeeded], uint64(1))
	is.Equal(s.Calls[broker.Failed], uint64(2))
	var calls uint64
	for _, n := range s.Calls {
		calls += n
	}
	is.Equal(calls, uint64(14)) // the malformed message never reached the broker
}

func TestEscapedIngressIsChosenFor(t *testing.T) {
	is := is.New(t)
	h, _, _ := newHandler(t, nil)
	var m struct {
		GLPath string `json:"gl_path"`
	}
	is.NoErr(json.Unmarshal(h.Handle([]byte(`{"gl_path":"\/azure\/"}`)), &m))
	is.True(strings.HasPrefix(m.GLPath, "/azure/") && m.GLPath != "/azure/") // a router of the pool
}

func TestARouterAddedByReconfigurationIsAnsweredWithItsOwnPath(t *testing.T) {
	is := is.New(t)
	h, b, _ := newHandler(t, nil)
	pools := []broker.Pool{{Ingress: "/azure/", Routers: []broker.Router{{Path: "/azure/added/", Weight: 1}}}}
	is.NoErr(b.Reconfigure(pools, broker.Policy{DisabledTime: time.Hour}, 0))
	for range 10 {
		reply := h.Handle(request("/azure/"))
		is.Equal(string(reply), string(gecholog.Reply("/azure/added/"))) // the new revision's only router
	}
}
