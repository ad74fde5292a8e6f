package broker_test

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/gecholog/broker/broker"
)

// FuzzHandle feeds the message handler anything at all. It must never
// panic, and must always answer: either empty, or a request-context answer
// naming one of the pool's routers.
//
//	go test -run '^$' -fuzz FuzzHandle -fuzztime 30s ./broker
func FuzzHandle(f *testing.F) {
	big := `{"gl_path":"/azure/","pad":"` + strings.Repeat("x", 1<<20) + `"}`
	for _, seed := range []string{
		`{"gl_path":"/azure/"}`,
		`{"gl_path":"/azure/dud/","egress_status_code":502}`,
		`{"gl_path":"/azure/gpt4/","egress_status_code":429,"inbound_headers":{"Retry-After":["30"]}}`,
		`{"gl_path":"/azure/gpt4/","egress_status_code":503,"inbound_headers":{"retry-after":["Wed, 21 Oct 2015 07:28:00 GMT"]}}`,
		`{"gl_path":"/azure/gpt4/","egress_status_code":503,"inbound_headers":{"Retry-After":[99999999999999999999]}}`,
		`{"gl_path":"/azure/dud/","egress_status_code":99999999999999999999999}`,
		`{"gl_path":"/azure/dud/","egress_status_code":-0}`,
		`{"gl_path":"/azure/dud/","egress_status_code":5e2}`,
		`{"gl_path":"/azure/dud/","egress_status_code":null}`,
		`{"gl_path":{"gl_path":{"gl_path":"/azure/"}}}`,
		`{"a":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],"gl_path":"/azure/"}`,
		`{"gl_path":"/äzure/"}`,
		`{"gl_path":"/azure/\u0000"}`,
		"{\"gl_path\":\"/azure/\xff\xfe\"}",
		`{"gl_path":"\/azure\/"}`,
		`{"gl_path":"/azure/","gl_path":"/azure/dud/"}`,
		`{"gl_path":42}`,
		`{"gl_path":["/azure/"]}`,
		`{"gl_path":true}`,
		`{"gl_path":"/azure/"} trailing`,
		`[{"gl_path":"/azure/"}]`,
		`"gl_path"`,
		`null`,
		``,
		`{`,
		big,
	} {
		f.Add([]byte(seed))
	}
	b, err := broker.New(broker.Config{
		Pools:  broker.DefaultPools(),
		Policy: broker.Policy{DisabledTime: time.Hour},
		ID:     "fuzz",
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		f.Fatal(err)
	}
	valid := map[string]bool{"/azure/gpt35turbo/": true, "/azure/gpt4/": true, "/azure/dud/": true}
	f.Fuzz(func(t *testing.T, data []byte) {
		in := bytes.Clone(data)
		out := b.Handle(data)
		if !bytes.Equal(in, data) {
			t.Fatalf("Handle changed its input")
		}
		if len(out) == 0 {
			return
		}
		var m map[string]string
		if err := json.Unmarshal(out, &m); err != nil || len(m) != 1 || !valid[m["gl_path"]] {
			t.Fatalf("answer %q to %q is not one of the pool's routers", out, data)
		}
	})
}
