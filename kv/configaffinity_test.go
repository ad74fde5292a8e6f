package kv_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/kv"
)

func TestAPoolsAffinityRoundTripsInTheDocument(t *testing.T) {
	for _, tc := range []struct {
		a       broker.Affinity
		written string
	}{
		{broker.Affinity{Session: true}, `"affinity":"session"`},
		{broker.Affinity{Session: true, LoadFactor: 2}, `"affinity":{"session":true,"load_factor":2}`},
		{broker.Affinity{Header: "X-Conversation-Id"}, `"affinity":{"header":"X-Conversation-Id"}`},
		{broker.Affinity{Session: true, TTL: 5 * time.Minute, Stay: true}, `"affinity":{"session":true,"ttl":"5m0s","stay":true}`},
		{broker.Affinity{}, `"ingress":"/azure/","routers"`},
	} {
		t.Run(tc.written, func(t *testing.T) {
			is := is.New(t)
			p := broker.Pool{Ingress: "/azure/", Affinity: tc.a, Routers: []broker.Router{{Path: "/azure/a/", Weight: 1}}}
			c := kv.NewFleetConfig([]broker.Pool{p}, broker.Policy{DisabledTime: time.Minute}, 0)
			data, err := json.Marshal(c)
			is.NoErr(err)
			is.True(strings.Contains(string(data), tc.written)) // written in its shortest form
			got, err := kv.DecodeFleetConfig(data)              // the strict reader takes it
			is.NoErr(err)
			pools, _, _, err := got.Settings()
			is.NoErr(err)
			is.Equal(pools[0].Affinity, tc.a) // read back
			is.True(got.Same(c))
		})
	}
}

func TestABadAffinityIsRefusedNamingWhatToWrite(t *testing.T) {
	valid := `{"version":1,"pools":[{"ingress":"/azure/","affinity":"session","routers":[{"path":"/azure/a/","weight":1}]}],"policy":{"disabled_time":"1m"}}`
	for _, c := range []struct{ affinity, want string }{
		{`"sessions"`, `affinity "sessions": give "affinity": "session" or {"header"`},
		{`{"header":"X-Id","colour":"red"}`, `unknown field "colour"`},
		{`{}`, `neither "session" nor a header`},
		{`{"header":"X Id"}`, `header "X Id": a header name`},
		{`{"session":true,"header":"X-Id"}`, "not both"},
		{`{"session":true,"load_factor":0.5}`, "load factor 0.5"},
		{`{"header":7}`, "affinity"},
		{`true`, "affinity"},
		{`{"session":true,"ttl":"ten minutes"}`, `ttl "ten minutes": not a duration`},
		{`{"session":true,"ttl":"48h"}`, "ttl 48h0m0s: must be from 1s to 24h0m0s"},
		{`{"session":true,"ttl":600}`, "affinity"},
		{`{"header":"X-Id","stay":true}`, `"session" affinity only`},
	} {
		doc := strings.Replace(valid, `"session"`, c.affinity, 1)
		if _, err := kv.DecodeFleetConfig([]byte(doc)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("affinity %s: got %v, want an error saying %q", c.affinity, err, c.want)
		}
	}
	if _, err := kv.DecodeFleetConfig([]byte(valid)); err != nil {
		t.Errorf("valid document refused: %v", err)
	}
}

func TestTheDifferSaysAnAffinityChanged(t *testing.T) {
	is := is.New(t)
	a := doc(10*time.Minute, "/azure/=/azure/gpt4/,/azure/gpt35/")
	b := doc(10*time.Minute, "/azure/=/azure/gpt4/,/azure/gpt35/")
	b.Pools[0].Affinity = &kv.ConfigAffinity{Header: "X-Conversation-Id", LoadFactor: 2}
	is.Equal(kv.SummarizeChanges(kv.DiffConfig(a, b)), "/azure/: affinity none→header X-Conversation-Id, load factor 2")
	c := doc(10*time.Minute, "/azure/=/azure/gpt4/,/azure/gpt35/")
	c.Pools[0].Affinity = &kv.ConfigAffinity{Session: true}
	// Its first calls now go by the default strategy of "session" affinity.
	is.Equal(kv.SummarizeChanges(kv.DiffConfig(b, c)), "/azure/: strategy random→sessions, affinity header X-Conversation-Id, load factor 2→session")
	is.Equal(kv.DiffConfig(c, c), nil) // the same affinity is no change
	d := doc(10*time.Minute, "/azure/=/azure/gpt4/,/azure/gpt35/")
	d.Pools[0].Affinity = &kv.ConfigAffinity{Session: true, TTL: "5m", Stay: true}
	is.Equal(kv.SummarizeChanges(kv.DiffConfig(c, d)), "/azure/: affinity session→session, ttl 5m0s, sessions stay")
}
