package main

import (
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
)

func TestThePoolsFileGivesAPoolAffinity(t *testing.T) {
	file := func(affinity string) []byte {
		return []byte(`{"pools":[{"ingress":"/azure/",` + affinity + `"routers":[{"path":"/azure/a/"},{"path":"/azure/b/"}]}]}`)
	}
	for _, tc := range []struct {
		affinity string
		want     broker.Affinity
	}{
		{``, broker.Affinity{}},
		{`"affinity":"session",`, broker.Affinity{Session: true}},
		{`"affinity":{"header":"X-Conversation-Id"},`, broker.Affinity{Header: "X-Conversation-Id"}},
		{`"affinity":{"session":true,"load_factor":1.25},`, broker.Affinity{Session: true, LoadFactor: 1.25}},
		{`"affinity":null,`, broker.Affinity{}},
		{`"affinity":{"session":true,"ttl":"5m","stay":true},`, broker.Affinity{Session: true, TTL: 5 * time.Minute, Stay: true}},
	} {
		t.Run(tc.affinity, func(t *testing.T) {
			is := is.New(t)
			pools, err := decodePools(file(tc.affinity))
			is.NoErr(err)
			is.Equal(pools[0].Affinity, tc.want)
		})
	}
	for _, tc := range []struct{ affinity, want string }{
		{`"affinity":"conversation",`, `affinity "conversation": give "affinity": "session" or {"header": "X-Conversation-Id"}`},
		{`"affinity":{"header":"X-Id","ttl":"5m"},`, `pool "/azure/": affinity: "ttl" and "stay" apply to "session" affinity only`},
		{`"affinity":{"session":true,"ttl":"2s3"},`, `affinity: ttl "2s3": not a duration; give one such as "10m"`},
		{`"affinity":{"session":true,"ttl":"100ms"},`, `ttl 100ms: must be from 1s to 24h0m0s`},
		{`"affinity":{"session":true,"stay":"yes"},`, `affinity`},
		{`"affinity":{"session":true,"lifetime":"5m"},`, `unknown field "lifetime"`},
		{`"affinity":{"header":"X-Id:"},`, `pool "/azure/": affinity: header "X-Id:"`},
		{`"affinity":{"header":"X-Id","load_factor":100},`, `load factor 100: must be from 1.1 to 10`},
	} {
		t.Run(tc.affinity, func(t *testing.T) {
			_, err := decodePools(file(tc.affinity))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error saying %q", err, tc.want)
			}
		})
	}
}
