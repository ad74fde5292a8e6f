package standin

import (
	"encoding/json"
	"net/http"
	"strings"
	"time"
)

// Finished is one finished call, as gecholog's transaction log tells it.
type Finished struct {
	Ingress string // the router the client called (original_gl_path)
	Router  string // the router used (gl_path); the ingress when empty
	Status  int    // the status the client got; 200 when zero
	// Start is when gecholog called the upstream (now when zero), and
	// Latency how long the upstream took.
	Start   time.Time
	Latency time.Duration
	// Headers are the upstream's headers, names as the upstream sent them;
	// gecholog logs them with canonical names.
	Headers map[string]string
	// Payload is the size in bytes of the prompt and of the completion
	// each: gecholog logs both whole.
	Payload int
	// Answer, when set, is the upstream's answer as gecholog logs it in
	// inbound_payload (a streamed one as a JSON string of its events);
	// nil is a chat completion of Payload bytes whose usage says a token
	// per four bytes.
	Answer json.RawMessage
	// Session is the transaction's session_id, GATEWAYID_UNIXNANO_COUNT_TRANSACTION
	// such as "AAA00001_1696681410696216000_3_0"; when empty, a fixed
	// id that is no session.
	Session string
}

// Transaction is the message gecholog publishes on its logger subject
// (coburn.gl.logger) for f: the whole transaction, with the prompt and
// the completion, in the shape GECHOLOG.md's "Transaction log" shows,
// with the fields the broker reads after the payloads, as encoding/json
// orders a map's keys.
func Transaction(f Finished) []byte {
	if f.Router == "" {
		f.Router = f.Ingress
	}
	if f.Status == 0 {
		f.Status = http.StatusOK
	}
	if f.Start.IsZero() {
		f.Start = time.Now()
	}
	stop := f.Start.Add(f.Latency)
	inbound := map[string][]string{"Content-Type": {"application/json"}, "Date": {stop.UTC().Format(http.TimeFormat)}}
	for k, v := range f.Headers {
		inbound[http.CanonicalHeaderKey(k)] = []string{v}
	}
	// A prompt and a completion of the size asked, with the escapes and
	// the non-ASCII text a real one has.
	text := func(n int) string {
		const line = "Who founded Microsoft? \"Bill Gates\" and Paul Allen, in 1975 — à Albuquerque.\n"
		return strings.Repeat(line, n/len(line)+1)[:max(n, 0)]
	}
	timer := func(start, stop time.Time) map[string]any {
		return map[string]any{"start": start, "stop": stop, "duration": stop.Sub(start).Milliseconds()}
	}
	var answer any = map[string]any{
		"object":  "chat.completion",
		"choices": []map[string]any{{"index": 0, "message": map[string]string{"role": "assistant", "content": text(f.Payload)}}},
		"usage":   map[string]int{"prompt_tokens": f.Payload / 4, "completion_tokens": f.Payload / 4},
	}
	if f.Answer != nil {
		answer = f.Answer
	}
	session := f.Session
	if session == "" {
		session = "GECHOLOG_1764361524675919620"
	}
	tx := map[string]any{
		"transaction_id":       "GECHOLOG_1764361524675919620",
		"session_id":           session,
		"ingress_egress_timer": timer(f.Start.Add(-time.Millisecond), stop.Add(time.Millisecond)),
		"egress_post_timer":    timer(stop.Add(time.Millisecond), stop.Add(2*time.Millisecond)),
		"request": map[string]any{
			"gl_path":          f.Router,
			"original_gl_path": f.Ingress,
			"ingress_headers":  map[string][]string{"Api-Key": {"[REDACTED]"}, "Content-Type": {"application/json"}},
			"ingress_payload": map[string]any{
				"messages":   []map[string]string{{"role": "user", "content": text(f.Payload)}},
				"max_tokens": 15,
			},
			"ingress_query": "",
			"processors":    map[string]any{"broker": map[string]any{"required": false, "completed": true}},
		},
		"response": map[string]any{
			"gl_path":                f.Router,
			"egress_status_code":     f.Status,
			"inbound_status_code":    f.Status,
			"outbound_inbound_timer": timer(f.Start, stop),
			"inbound_headers":        inbound,
			"inbound_payload":        answer,
			"egress_headers":         map[string][]string{"Content-Type": {"application/json"}},
		},
	}
	b, err := json.Marshal(tx)
	if err != nil {
		panic(err) // maps of strings, numbers and times always encode
	}
	return b
}
