package replica_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/replica"
	"github.com/gecholog/broker/statuspage"
)

// conversation is the value the calls of the test below carry in their
// session header: no answer of the replica may hold it.
const conversation = "conv-7f3a-SECRET-VALUE"

// TestSessionCountsAreOnMetricsTheExplanationAndThePage sends request
// contexts as gecholog does, with and without a session header, to a
// replica on a real server: /metrics counts them by outcome and problem,
// with HELP text; /explain and the status page name the pool's header,
// never a value.
func TestSessionCountsAreOnMetricsTheExplanationAndThePage(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	pool := broker.Pool{Ingress: "/azure/", Affinity: broker.Affinity{Header: "X-Conversation-Id", LoadFactor: 2}, Routers: []broker.Router{
		{Path: "/azure/a/", Weight: 1}, {Path: "/azure/b/", Weight: 1}}}
	plain := broker.Pool{Ingress: "/openai/", Routers: []broker.Router{{Path: "/openai/a/", Weight: 1}}}
	rs := runReplicas(t, replica.Config{NATS: natsconn.Settings{Servers: s.ClientURL()}, Pools: []broker.Pool{pool, plain},
		Policy: broker.Policy{DisabledTime: time.Minute}, MetricsAddr: "127.0.0.1:0"}, 1)
	nc := natstest.Connect(t, s)
	call := func(headers string) {
		t.Helper()
		msg := fmt.Appendf(nil, `{"gl_path":"/azure/","ingress_headers":{"Api-Key":["sk-1"]%s}}`, headers)
		if headers == "none" {
			msg = []byte(`{"gl_path":"/azure/"}`)
		}
		m, err := nc.Request(replica.DefaultSubject, msg, 2*time.Second)
		is.NoErr(err)
		var r struct {
			GLPath string `json:"gl_path"`
		}
		is.NoErr(json.Unmarshal(m.Data, &r))
		is.True(strings.HasPrefix(r.GLPath, "/azure/")) // answered with a router of the pool
		tell(t, nc, r.GLPath, 200)
	}
	for range 3 {
		call(`,"x-conversation-id":["` + conversation + `"]`) // keyed
	}
	call("")                                                                             // no header: no key, no problem
	call("none")                                                                         // no headers at all
	call(`,"X-Conversation-Id":[""]`)                                                    // empty
	call(`,"X-Conversation-Id":["` + strings.Repeat("k", broker.MaxSessionKey+1) + `"]`) // too long
	call(`,"X-Conversation-Id":42`)                                                      // malformed
	addr := rs.listener(t, 0)

	metrics := get(t, "http://"+addr+"/metrics")
	for series, want := range map[string]float64{
		`broker_session_calls_total{outcome="keyed"}`:            3,
		`broker_session_calls_total{outcome="spilled"}`:          0,
		`broker_session_calls_total{outcome="no_key"}`:           5,
		`broker_session_key_problems_total{problem="empty"}`:     1,
		`broker_session_key_problems_total{problem="too_long"}`:  1,
		`broker_session_key_problems_total{problem="malformed"}`: 1,
	} {
		is.Equal(metricValue(t, metrics, series), want) // series counts what was sent
	}
	says(t, "/metrics", metrics, "# HELP broker_session_calls_total Calls of pools with session affinity")
	says(t, "/metrics", metrics, "# HELP broker_session_key_problems_total Calls of pools with session affinity whose session header gave no key")

	explained := get(t, "http://"+addr+"/explain?ingress=/azure/")
	var x replica.Explained
	is.NoErr(json.Unmarshal([]byte(explained), &x))
	is.Equal(x.Affinity, &replica.ExplainedAffinity{Header: "X-Conversation-Id", LoadFactor: 2}) // the pool's affinity
	var none replica.Explained
	is.NoErr(json.Unmarshal([]byte(get(t, "http://"+addr+"/explain?ingress=/openai/")), &none))
	is.Equal(none.Affinity, nil) // a pool without affinity has none

	var snap statuspage.Snapshot
	is.NoErr(json.Unmarshal([]byte(get(t, "http://"+addr+"/status.json")), &snap))
	is.Equal(snap.Pools[0].Affinity, &statuspage.Affinity{Header: "X-Conversation-Id", LoadFactor: 2}) // the page names the header
	is.Equal(snap.Pools[1].Affinity, nil)
	is.Equal(snap.Fleet.Replicas[0].Sessions, &statuspage.Sessions{Keyed: 3, NoKey: 5}) // this replica's counts

	for what, page := range map[string]string{"/metrics": metrics, "/explain": explained, "/status.json": get(t, "http://"+addr+"/status.json")} {
		for _, value := range []string{conversation, "sk-1"} {
			if strings.Contains(page, value) {
				t.Errorf("%s shows the header value %q", what, value)
			}
		}
	}
}
