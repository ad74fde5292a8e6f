package gecholog_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/gecholog"
	"github.com/gecholog/broker/internal/standin"
)

// usageOf parses a transaction whose upstream answered payload.
func usageOf(t *testing.T, payload string) broker.Usage {
	t.Helper()
	tx, err := gecholog.ParseTransaction([]byte(`{"request":{"gl_path":"/a/b/","ingress_payload":{"usage":{"prompt_tokens":999}}},"response":{"gl_path":"/a/b/","inbound_payload":` + payload + `}}`))
	if err != nil {
		t.Fatalf("%s: %v", payload, err)
	}
	return tx.Usage
}

// sse is a streamed answer's body as gecholog logs it: one JSON string.
func sse(events ...string) string {
	var b strings.Builder
	for _, e := range events {
		b.WriteString(e + "\n\n")
	}
	q, _ := json.Marshal(b.String())
	return string(q)
}

func known(in, out, cached int64) broker.Usage {
	return broker.Usage{State: broker.UsageKnown, Input: in, Output: out, CachedInput: cached}
}

var (
	unknown    = broker.Usage{State: broker.UsageUnknown}
	unreadable = broker.Usage{State: broker.UsageUnreadable}
)

func TestUsageIsReadFromEachProvidersAnswer(t *testing.T) {
	for _, tc := range []struct {
		name, payload string
		want          broker.Usage
	}{
		{"openai", `{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"}}],
			"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},
			"completion_tokens_details":{"reasoning_tokens":0}}}`, known(19, 10, 0)},
		// Cached tokens are part of the prompt's.
		{"openai cached", `{"usage":{"prompt_tokens":2006,"completion_tokens":300,"total_tokens":2306,"prompt_tokens_details":{"cached_tokens":1920}}}`, known(86, 300, 1920)},
		{"azure openai", `{"choices":[],"prompt_filter_results":[{"prompt_index":0}],"usage":{"completion_tokens":7,"prompt_tokens":13,"total_tokens":20}}`, known(13, 7, 0)},
		{"openai embeddings", `{"object":"list","data":[],"usage":{"prompt_tokens":8,"total_tokens":8}}`, known(8, 0, 0)},
		// Anthropic's cache reads and writes are beside input_tokens; a
		// write is charged as input.
		{"anthropic", `{"id":"msg_1","type":"message","content":[{"type":"text","text":"Hi"}],
			"usage":{"input_tokens":25,"cache_creation_input_tokens":100,"cache_read_input_tokens":2000,"output_tokens":12}}`, known(125, 12, 2000)},
		{"openai responses", `{"object":"response","usage":{"input_tokens":328,"input_tokens_details":{"cached_tokens":128},"output_tokens":52,"total_tokens":380}}`,
			known(200, 52, 128)},
		{"no usage", `{"choices":[]}`, unknown},
		{"usage null", `{"usage":null}`, unknown},
		{"usage empty", `{"usage":{}}`, unknown},
		{"only total", `{"usage":{"total_tokens":29}}`, unknown},
		{"payload null", `null`, unknown},
		{"payload an array", `[{"usage":{"prompt_tokens":1}}]`, unknown},
		{"payload not JSON, logged as a string", `"<html>502 Bad Gateway</html>"`, unknown},
		// The last usage wins whole, as encoding/json takes a raw message.
		{"usage twice", `{"usage":{"prompt_tokens":1,"completion_tokens":2},"usage":{"prompt_tokens":5}}`, known(5, 0, 0)},
	} {
		if got := usageOf(t, tc.payload); got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func TestUsageOfAStreamedAnswerIsWhatItsEventsSayLast(t *testing.T) {
	openai := sse(
		`data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""}}],"usage":null}`,
		`data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hi \"there\""}}],"usage":null}`,
		`data: {"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":4}}}`,
		`data: [DONE]`)
	anthropic := sse(
		"event: message_start\n"+`data: {"type":"message_start","message":{"id":"msg_1","type":"message","content":[],"usage":{"input_tokens":25,"cache_creation_input_tokens":0,"cache_read_input_tokens":10,"output_tokens":1}}}`,
		"event: content_block_delta\n"+`data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}`,
		"event: message_delta\n"+`data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":15}}`,
		"event: message_stop\n"+`data: {"type":"message_stop"}`)
	withoutUsage := sse(`data: {"choices":[{"delta":{"content":"Hi"}}]}`, `data: [DONE]`)
	crlf, _ := json.Marshal("data: {\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\r\n\r\ndata: [DONE]\r\n\r\n")
	for _, tc := range []struct {
		name, payload string
		want          broker.Usage
	}{
		{"openai with include_usage", openai, known(15, 10, 4)},
		// message_start says the input, message_delta the output so far.
		{"anthropic", anthropic, known(25, 15, 10)},
		{"no usage asked for", withoutUsage, unknown},
		{"lines ended by CRLF", string(crlf), known(3, 4, 0)},
		{"an event that is no JSON is no event", sse(`data: {"usage":{"prompt_tokens":3}}`, `data: {"usage":{"prompt_tokens":-1`), known(3, 0, 0)},
		{"an event's bad count", sse(`data: {"usage":{"prompt_tokens":3}}`, `data: {"usage":{"completion_tokens":"4"}}`), unreadable},
		{"a later good count replaces a bad one", sse(`data: {"usage":{"prompt_tokens":3.5}}`, `data: {"usage":{"prompt_tokens":4}}`), known(4, 0, 0)},
		{"not data", sse(`event: {"usage":{"prompt_tokens":3}}`, `: {"usage":{"prompt_tokens":3}}`), unknown},
	} {
		if got := usageOf(t, tc.payload); got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

// TestUsageThatCannotBeACountIsUnreadable: a forged or broken answer's
// usage is refused for the call, never counted as something else. 10^15
// is a count the parser reads: the per-call cap refuses it (broker.Used).
func TestUsageThatCannotBeACountIsUnreadable(t *testing.T) {
	for _, tc := range []struct {
		usage string
		want  broker.Usage
	}{
		{`{"prompt_tokens":-5,"completion_tokens":10}`, unreadable},
		{`{"prompt_tokens":5.5,"completion_tokens":10}`, unreadable},
		{`{"prompt_tokens":5,"completion_tokens":1e2}`, unreadable},
		{`{"prompt_tokens":"5","completion_tokens":10}`, unreadable},
		{`{"prompt_tokens":true}`, unreadable},
		{`{"prompt_tokens":{"n":5}}`, unreadable},
		{`{"input_tokens":[5]}`, unreadable},
		{`{"prompt_tokens":9007199254740993}`, unreadable},        // beyond 2^53
		{`{"prompt_tokens":99999999999999999999999}`, unreadable}, // beyond int64
		{`{"prompt_tokens":10,"prompt_tokens_details":{"cached_tokens":11}}`, unreadable},
		{`{"prompt_tokens":10,"prompt_tokens_details":"all"}`, unreadable},
		{`{"input_tokens":10,"cache_read_input_tokens":-1}`, unreadable},
		{`"lots"`, unreadable},
		{`12`, unreadable},
		{`{"prompt_tokens":1000000000000000,"completion_tokens":1}`, known(1_000_000_000_000_000, 1, 0)},
		{`{"prompt_tokens":null,"completion_tokens":7}`, known(0, 7, 0)},
		{`{"prompt_tokens":-0,"completion_tokens":0}`, known(0, 0, 0)},
	} {
		if got := usageOf(t, `{"usage":`+tc.usage+`}`); got != tc.want {
			t.Errorf("usage %s: %+v, want %+v", tc.usage, got, tc.want)
		}
	}
}

func TestUsageIsNeverReadFromThePrompt(t *testing.T) {
	is := is.New(t)
	tx, err := gecholog.ParseTransaction([]byte(`{"request":{"gl_path":"/a/b/","ingress_payload":{"usage":{"prompt_tokens":9}},"outbound_payload":{"usage":{"prompt_tokens":9}}},"response":{"gl_path":"/a/b/","egress_payload":{"usage":{"prompt_tokens":9}}}}`))
	is.NoErr(err)
	is.Equal(tx.Usage, unknown) // only response.inbound_payload says the usage
}

func TestParseTransactionReadsTheUsageOfAWholeTransaction(t *testing.T) {
	is := is.New(t)
	data := standin.Transaction(standin.Finished{Ingress: "/azure/", Router: "/azure/gpt4/", Latency: time.Millisecond, Payload: 4000})
	tx, err := gecholog.ParseTransaction(data)
	is.NoErr(err)
	is.Equal(tx.Usage, known(1000, 1000, 0)) // the stand-in's usage: a token per four bytes
}

// stdUsage is what gecholog's scanner must read of an upstream's answer,
// as encoding/json reads it.
func stdUsage(payload json.RawMessage) broker.Usage {
	type fields struct {
		Prompt        json.RawMessage `json:"prompt_tokens"`
		Completion    json.RawMessage `json:"completion_tokens"`
		PromptDetails json.RawMessage `json:"prompt_tokens_details"`
		Input         json.RawMessage `json:"input_tokens"`
		Output        json.RawMessage `json:"output_tokens"`
		InputDetails  json.RawMessage `json:"input_tokens_details"`
		CacheRead     json.RawMessage `json:"cache_read_input_tokens"`
		CacheCreation json.RawMessage `json:"cache_creation_input_tokens"`
	}
	const absent, set, bad = 0, 1, 2
	type count struct {
		n     int64
		state int
	}
	isNull := func(raw json.RawMessage) bool { return raw == nil || string(raw) == "null" }
	read := func(raw json.RawMessage) count {
		if isNull(raw) {
			return count{}
		}
		var n int64
		if err := json.Unmarshal(raw, &n); err != nil || n < 0 || n > broker.MaxTokens {
			return count{state: bad}
		}
		return count{n: n, state: set}
	}
	details := func(raw json.RawMessage) count {
		if isNull(raw) {
			return count{}
		}
		var d struct {
			Cached json.RawMessage `json:"cached_tokens"`
		}
		if raw[0] != '{' || json.Unmarshal(raw, &d) != nil {
			return count{state: bad}
		}
		return read(d.Cached)
	}
	// counts are the eight fields in fields' order, and whether usage was
	// no object.
	type counts struct {
		c     [8]count
		isBad bool
	}
	usage := func(raw json.RawMessage) counts {
		var out counts
		if isNull(raw) {
			return out
		}
		var f fields
		if raw[0] != '{' || json.Unmarshal(raw, &f) != nil {
			out.isBad = true
			return out
		}
		out.c = [8]count{read(f.Prompt), read(f.Completion), details(f.PromptDetails), read(f.Input), read(f.Output),
			details(f.InputDetails), read(f.CacheRead), read(f.CacheCreation)}
		return out
	}
	var u counts
	merge := func(o counts) {
		for i, c := range o.c {
			if c.state != absent {
				u.c[i] = c
			}
		}
		u.isBad = u.isBad || o.isBad
	}
	switch {
	case len(payload) == 0:
	case payload[0] == '{':
		var p struct {
			Usage json.RawMessage `json:"usage"`
		}
		if json.Unmarshal(payload, &p) == nil {
			u = usage(p.Usage)
		}
	case payload[0] == '"':
		var text string
		if json.Unmarshal(payload, &text) != nil {
			break
		}
		text = strings.ReplaceAll(text, "\r\n", "\n")
		text = strings.ReplaceAll(text, "\r", "\n")
		for line := range strings.SplitSeq(text, "\n") {
			data, ok := strings.CutPrefix(line, "data:")
			if !ok || !strings.HasPrefix(strings.TrimLeft(data, " \t\r\n"), "{") {
				continue
			}
			var ev struct {
				Usage   json.RawMessage `json:"usage"`
				Message json.RawMessage `json:"message"`
			}
			if json.Unmarshal([]byte(data), &ev) != nil {
				continue
			}
			var msg struct {
				Usage json.RawMessage `json:"usage"`
			}
			if len(ev.Message) > 0 && ev.Message[0] == '{' {
				_ = json.Unmarshal(ev.Message, &msg)
			}
			merge(usage(msg.Usage))
			merge(usage(ev.Usage))
		}
	}
	if u.isBad {
		return unreadable
	}
	for _, c := range u.c {
		if c.state == bad {
			return unreadable
		}
	}
	c := u.c
	switch {
	case c[0].state == set || c[1].state == set:
		if c[2].n > c[0].n {
			return unreadable
		}
		return known(c[0].n-c[2].n, c[1].n, c[2].n)
	case c[3].state == set || c[4].state == set:
		if c[5].n > c[3].n {
			return unreadable
		}
		return known(c[3].n-c[5].n+c[7].n, c[4].n, c[5].n+c[6].n)
	}
	return unknown
}

// usageCorpus is the edge cases of a usage, placed in an answer and in a
// streamed one, for the differential test and the fuzzer.
func usageCorpus() []string {
	usages := []string{
		`{"prompt_tokens":19,"completion_tokens":10,"prompt_tokens_details":{"cached_tokens":4}}`,
		`{"input_tokens":25,"cache_creation_input_tokens":3,"cache_read_input_tokens":10,"output_tokens":15}`,
		`{"input_tokens":328,"input_tokens_details":{"cached_tokens":128},"output_tokens":52}`,
		`{"PROMPT_TOKENS":1,"prompt_tokens":2,"Completion_Tokens":3}`,
		`{"prompt_tokens":1,"prompt_tokens":null}`,
		`{"prompt_tokens":5,"prompt_tokens_details":{"cached_tokens":1},"prompt_tokens_details":null}`,
		`{"prompt_tokens":5,"prompt_tokens_details":{"cached_tokens":6}}`,
		`{"prompt_tokens":-1}`, `{"prompt_tokens":1.0}`, `{"prompt_tokens":"1"}`, `{"prompt_tokens":9007199254740992}`,
		`{"prompt_tokens":9007199254740993}`, `{"prompt_tokens":[1]}`, `{"prompt_tokens_details":[]}`,
		`{"prompt_tokens":1,"input_tokens":2}`, `{"pro\u006dpt_tokens":7}`, `{"total_tokens":3}`,
		`{}`, `null`, `[]`, `"x"`, `7`, `{"prompt_tokens":1`, `{"prompt_tokens":}`,
	}
	var c []string
	for _, u := range usages {
		c = append(c,
			fmt.Sprintf(`{"response":{"gl_path":"/a/","inbound_payload":{"usage":%s}}}`, u),
			fmt.Sprintf(`{"response":{"gl_path":"/a/","inbound_payload":{"id":"x","usage":%s,"choices":[]}},"response":{"egress_status_code":200}}`, u),
			fmt.Sprintf(`{"response":{"gl_path":"/a/","inbound_payload":{"usage":%s},"inbound_payload":{"usage":{"prompt_tokens":1}}}}`, u),
			fmt.Sprintf(`{"response":{"gl_path":"/a/","inbound_payload":{"usage":{"prompt_tokens":1}}},"response":{"inbound_payload":{"usage":%s}}}`, u),
			fmt.Sprintf(`{"response":{"gl_path":"/a/","inbound_payload":{"usage":%s}},"response":null}`, u),
			fmt.Sprintf(`{"response":{"gl_path":"/a/","inbound_payload":%s}}`, sse(`data: {"usage":`+u+`}`, `data: [DONE]`)),
			fmt.Sprintf(`{"response":{"gl_path":"/a/","inbound_payload":%s}}`, sse(`data: {"message":{"usage":`+u+`}}`, `data:{"usage":{"output_tokens":2}}`)),
			fmt.Sprintf(`{"response":{"gl_path":"/a/","inbound_payload":%s}}`, sse(`data: {"usage":{"prompt_tokens":1},"message":{"usage":`+u+`}}`)),
		)
	}
	return append(c,
		`{"response":{"gl_path":"/a/","inbound_payload":"data: {\"usage\":{\"prompt_tokens\":3}}\r\ndata: {\"usage\":{\"completion_tokens\":4}}\r"}}`,
		`{"response":{"gl_path":"/a/","inbound_payload":"data: {\"usage\":{\"prompt_tokens\":3}} x\ndata: {\"message\":5}\ndata: null\ndata: [1]"}}`,
		`{"response":{"gl_path":"/a/","inbound_payload":"data: {\"usage\":{\"prompt_tokens\":3}}\u2028data: {}\n\ud83d"}}`,
		`{"response":{"gl_path":"/a/","Inbound_Payload":{"USAGE":{"prompt_tokens":3}}}}`,
		`{"response":{"gl_path":"/a/","inbound_payload":{"usage":{"prompt_tokens":3}},"inbound_payload":null}}`,
		`{"response":{"gl_path":"/a/","inbound_payload":{"x":`+strings.Repeat("[", 9997)+strings.Repeat("]", 9997)+`}}}`,
		`{"response":{"gl_path":"/a/","inbound_payload":{"x":`+strings.Repeat("[", 9998)+strings.Repeat("]", 9998)+`}}}`,
		`{"response":{"gl_path":"/a/","inbound_payload":{"usage":{"x":`+strings.Repeat("[", 9996)+strings.Repeat("]", 9996)+`}}}}`,
		`{"response":{"gl_path":"/a/","inbound_payload":{"usage":{"x":`+strings.Repeat("[", 9997)+strings.Repeat("]", 9997)+`}}}}`,
		`{"response":{"gl_path":"/a/","inbound_payload":{"usage":{"prompt_tokens_details":{"x":`+strings.Repeat("[", 9995)+strings.Repeat("]", 9995)+`}}}}}`,
		`{"response":{"gl_path":"/a/","inbound_payload":{"usage":{"prompt_tokens_details":{"x":`+strings.Repeat("[", 9996)+strings.Repeat("]", 9996)+`}}}}}`,
	)
}

func TestUsageAgreesWithEncodingJSON(t *testing.T) {
	for i, msg := range usageCorpus() {
		t.Run(fmt.Sprint(i), func(t *testing.T) { agreeTransaction(t, []byte(msg)) })
	}
}

// BenchmarkParseStreamedTransaction reads a transaction whose answer was
// streamed: 2,000 events of OpenAI's chunks, the last with the usage, as
// gecholog logs them (one JSON string), which is unquoted once to read.
//
//	go test -run '^$' -bench Transaction -benchmem ./gecholog
func BenchmarkParseStreamedTransaction(b *testing.B) {
	events := make([]string, 0, 2002)
	for range 2000 {
		events = append(events, `data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Who \"founded\" it"}}],"usage":null}`)
	}
	events = append(events, `data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":19,"completion_tokens":2000,"prompt_tokens_details":{"cached_tokens":0}}}`, `data: [DONE]`)
	data := standin.Transaction(standin.Finished{Ingress: "/azure/", Router: "/azure/gpt4/", Latency: time.Second, Payload: 1 << 10,
		Answer: json.RawMessage(sse(events...))})
	b.Run(fmt.Sprintf("size=%dKB", len(data)>>10), func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			tx, err := gecholog.ParseTransaction(data)
			if err != nil || tx.Usage.State != broker.UsageKnown {
				b.Fatal(err, tx.Usage)
			}
		}
	})
}
