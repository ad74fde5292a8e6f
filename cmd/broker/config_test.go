package main

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/kv"
	"github.com/gecholog/broker/replica"
)

// The fleet's configuration commands, run as an operator runs them
// against a real server.

// poolsJSON is a pools file of /azure/ over routers, each "path" or
// "path:weight".
func poolsJSON(routers ...string) []byte {
	var rs []string
	for _, r := range routers {
		path, w, _ := strings.Cut(r, ":")
		rs = append(rs, fmt.Sprintf(`{"path": %q, "weight": %s}`, path, cmpOr(w, "1")))
	}
	return fmt.Appendf(nil, `{"pools": [{"ingress": "/azure/", "routers": [%s]}]}`, strings.Join(rs, ", "))
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// configStore opens the configuration bucket on s, creating it.
func configStore(t *testing.T, s *server.Server) (*kv.ConfigStore, jetstream.JetStream) {
	t.Helper()
	js := natstest.JetStream(t, s)
	cs, err := kv.OpenConfig(context.Background(), js, kv.ConfigBucket("gl_broker"), true)
	if err != nil {
		t.Fatal(err)
	}
	return cs, js
}

// latestRevision is the newest revision of the configuration on s; 0:
// none.
func latestRevision(t *testing.T, s *server.Server) uint64 {
	t.Helper()
	cs, _ := configStore(t, s)
	l, err := cs.Latest(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return l.Revision
}

// op runs the program and fails the test on an error.
func op(t *testing.T, getenv func(string) string, args ...string) string {
	t.Helper()
	out, errs, err := runOp(getenv, args...)
	if err != nil {
		t.Fatalf("broker %s: %v\n%s", strings.Join(args, " "), err, errs)
	}
	return out
}

// opFails runs the program, fails the test unless it fails with one line,
// and returns that line.
func opFails(t *testing.T, getenv func(string) string, args ...string) string {
	t.Helper()
	out, _, err := runOp(getenv, args...)
	if err == nil {
		t.Fatalf("broker %s succeeded, printing:\n%s", strings.Join(args, " "), out)
	}
	oneLine(t, err)
	return err.Error()
}

func TestConfigSetShowHistoryDiffAndRollback(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	ops := env("NATS_URL", s.ClientURL(), "USER", "alice")
	a := writeFile(t, "a.json", poolsJSON("/azure/gpt4/", "/azure/gpt35turbo/"))

	out := op(t, ops, "config", "set", a)
	saysFirst(t, "set", out, "wrote revision 1 of bucket gl_broker_config by alice@")
	saysLast(t, "set", out, "\nfirst revision: /azure/ over 2 routers\n")

	out = op(t, ops, "config", "set", a)
	is.Equal(out, "no change: revision 1 already configures this; nothing written\n") // identical content
	is.Equal(latestRevision(t, s), uint64(1))                                         // nothing written

	b := writeFile(t, "b.json", poolsJSON("/azure/gpt4/:3", "/azure/gpt35turbo/", "/azure/new/"))
	out = op(t, ops, "config", "set", b, "--by", "bob")
	is.Equal(lines(out)[1], "changed since revision 1: /azure/: weight /azure/gpt4/ 1→3, +/azure/new/") // one line of what changed
	saysFirst(t, "set", out, "wrote revision 2 of bucket gl_broker_config by bob, from config set "+b)

	out = op(t, ops, "config", "show")
	saysFirst(t, "show", out, "revision 2 of bucket gl_broker_config on nats://127.0.0.1:")
	says(t, "show", lines(out)[0], " by bob, from config set "+b)
	says(t, "show", out, "\npool /azure/, strategy random\n  /azure/gpt4/        weight 3  priority 0\n")
	says(t, "show", out, "\n  disabled_time   10m\n")
	says(t, "show", out, "\ninflight_bound    5m\n")

	// A whole document, as show --json prints it, with a policy change.
	var shown struct {
		Revision uint64         `json:"revision"`
		By       string         `json:"by"`
		Document map[string]any `json:"document"`
	}
	is.NoErr(json.Unmarshal([]byte(op(t, ops, "config", "show", "--json")), &shown))
	is.Equal(shown.Revision, uint64(2))
	is.Equal(shown.By, "bob")
	shown.Document["policy"].(map[string]any)["disabled_time"] = "2m"
	data, err := json.Marshal(shown.Document)
	is.NoErr(err)
	out = op(t, ops, "config", "set", writeFile(t, "doc.json", data))
	is.Equal(lines(out)[1], "changed since revision 2: policy.disabled_time 10m→2m")

	// A pools file keeps the policy in force.
	out = op(t, ops, "config", "set", a)
	is.Equal(lines(out)[1], "changed since revision 3: /azure/: -/azure/new/, weight /azure/gpt4/ 3→1") // the policy is no change
	says(t, "show", op(t, ops, "config", "show"), "\n  disabled_time   2m\n")

	out = op(t, ops, "config", "history")
	h := lines(out)
	is.Equal(len(h), 5) // a heading and a line per revision
	is.Equal(strings.Fields(h[0]), []string{"REVISION", "WRITTEN", "BY", "SOURCE", "CHANGES"})
	for i, want := range []string{
		"first revision: /azure/ over 2 routers",
		"/azure/: weight /azure/gpt4/ 1→3, +/azure/new/",
		"policy.disabled_time 10m→2m",
		"/azure/: -/azure/new/, weight /azure/gpt4/ 3→1",
	} {
		saysFirst(t, "history line", h[i+1], strconv.Itoa(i+1)+" ")
		saysLast(t, "history line", h[i+1], want)
	}
	says(t, "history", h[2], " bob ")

	out = op(t, ops, "config", "diff")
	is.Equal(lines(out)[1:], []string{"/azure/: -/azure/new/", "/azure/: weight /azure/gpt4/ 3→1"}) // one change per line
	saysFirst(t, "diff", out, "revision 3 (")
	out = op(t, ops, "config", "diff", "2", "3")
	is.Equal(lines(out)[1:], []string{"policy.disabled_time 10m→2m"})
	var diff struct {
		From, To uint64
		Changes  []kv.ConfigChange
	}
	is.NoErr(json.Unmarshal([]byte(op(t, ops, "config", "diff", "1", "2", "--json")), &diff))
	is.Equal(diff.From, uint64(1))
	is.Equal(diff.To, uint64(2))
	is.Equal(diff.Changes, []kv.ConfigChange{
		{Pool: "/azure/", Router: "/azure/gpt4/", Field: "weight", From: "1", To: "3"},
		{Pool: "/azure/", Router: "/azure/new/", Field: "router", To: "weight 1"},
	}) // structured changes

	out = op(t, ops, "config", "rollback", "--by", "carol")
	saysFirst(t, "rollback", out, "wrote revision 5 of bucket gl_broker_config by carol, from rollback of revision 3")
	is.Equal(lines(out)[1], "changed since revision 4: /azure/: weight /azure/gpt4/ 1→3, +/azure/new/")
	out = op(t, ops, "config", "rollback", "3")
	is.Equal(out, "no change: revision 5 already configures this; nothing written\n") // the same content again
	out = op(t, ops, "config", "rollback", "1")
	saysFirst(t, "rollback", out, "wrote revision 6 of bucket gl_broker_config by alice@")
	is.Equal(lines(out)[1], "changed since revision 5: /azure/: -/azure/new/, weight /azure/gpt4/ 3→1; policy.disabled_time 2m→10m")
	h = lines(op(t, ops, "config", "history"))
	says(t, "history", h[6], " rollback of revision 1 ")
	saysLast(t, "history", h[6], " /azure/: -/azure/new/, weight /azure/gpt4/ 3→1; policy.disabled_time 2m→10m")
}

func TestConfigSetRefusesBadInputWithOneLineAndWritesNothing(t *testing.T) {
	s := natstest.Start(t)
	ops := env("NATS_URL", s.ClientURL())
	op(t, ops, "config", "set", writeFile(t, "a.json", poolsJSON("/azure/gpt4/")))
	doc := func(pools string) []byte {
		return fmt.Appendf(nil, `{"version": 1, "pools": %s, "policy": {"disabled_time": "1m"}}`, pools)
	}
	big := append([]byte(`{"pools": [], "x": "`), make([]byte, 1<<20)...)
	for _, tc := range []struct {
		name string
		file []byte
		more []string // further arguments
		want string
	}{
		{"bad JSON", []byte(`{"pools": [`), nil, "decode pools: unexpected EOF"},
		{"an unknown field", []byte(`{"pools": [{"ingress": "/azure/", "routers": [{"path": "/azure/a/", "wieght": 2}]}]}`), nil, `unknown field "wieght"`},
		{"an unknown field of a document", []byte(`{"version": 1, "pools": [{"ingress": "/azure/", "routers": [{"path": "/azure/a/", "weight": 1}]}], "polcy": {}}`), nil, `"polcy": unknown field`},
		{"an array, not a pools file", []byte(`[{"ingress": "/azure/"}]`), nil, `decode pools: the file: got a JSON array, want an object {"pools": [...]}`},
		{"a weight that is a string", []byte(`{"pools": [{"ingress": "/azure/", "routers": [{"path": "/azure/a/", "weight": "2"}]}]}`), nil, "decode pools: pools.routers.weight: got a JSON string, want a whole number"},
		{"a weight NaN", []byte(`{"pools": [{"ingress": "/azure/", "routers": [{"path": "/azure/a/", "weight": NaN}]}]}`), nil, "invalid character 'N'"},
		{"a weight \"NaN\" in a document", doc(`[{"ingress": "/azure/", "routers": [{"path": "/azure/a/", "weight": "NaN"}]}]`), nil, "pools.routers.weight: got a JSON string"},
		{"a negative weight", poolsJSON("/azure/a/:-1"), nil, `router "/azure/a/": weight -1 is outside 1..`},
		{"a negative weight in a document", doc(`[{"ingress": "/azure/", "routers": [{"path": "/azure/a/", "weight": -1}]}]`), nil, `router "/azure/a/": weight -1 is outside 1..`},
		{"a negative price", []byte(`{"pools": [{"ingress": "/azure/", "routers": [{"path": "/azure/a/", "price": {"input": -2.5, "output": 10}}]}]}`), nil,
			`pool "/azure/": router "/azure/a/": price.input -2.5: a price is 0 or more (per million tokens)`},
		{"a price NaN", []byte(`{"pools": [{"ingress": "/azure/", "routers": [{"path": "/azure/a/", "price": {"input": NaN, "output": 10}}]}]}`), nil, "invalid character 'N'"},
		{"a price that is a string", []byte(`{"pools": [{"ingress": "/azure/", "routers": [{"path": "/azure/a/", "price": {"input": "2.5", "output": 10}}]}]}`), nil,
			"decode pools: pools.routers.price.input: got a JSON string, want a number"},
		{"a price without output", []byte(`{"pools": [{"ingress": "/azure/", "routers": [{"path": "/azure/a/", "price": {"input": 2.5}}]}]}`), nil,
			`pool "/azure/": router "/azure/a/": price.output: missing; give the price per million output tokens`},
		{"a price in another currency field", []byte(`{"pools": [{"ingress": "/azure/", "routers": [{"path": "/azure/a/", "price": {"input": 2.5, "output": 10, "currency": "EUR"}}]}]}`), nil,
			`unknown field "currency"`},
		{"a negative cached price in a document", doc(`[{"ingress": "/azure/", "routers": [{"path": "/azure/a/", "weight": 1, "price": {"input": 1, "output": 1, "cached_input": -1}}]}]`), nil,
			`router "/azure/a/": price.cached_input -1: a price is 0 or more`},
		{"a token budget that is no whole number", []byte(`{"pools": [{"ingress": "/azure/", "routers": [{"path": "/azure/a/", "budget": {"tokens_per_minute": 1.5}}]}]}`), nil,
			"decode pools: pools.routers.budget.tokens_per_minute: got a JSON number 1.5, want a whole number"},
		{"a spend budget without a price", []byte(`{"pools": [{"ingress": "/azure/", "routers": [{"path": "/azure/a/", "budget": {"spend_per_day": 50}}]}]}`), nil,
			`router "/azure/a/": budget.spend_per_day: the router has no price`},
		{"a budget's time zone that is none", []byte(`{"pools": [{"ingress": "/azure/", "routers": [{"path": "/azure/a/", "budget": {"tokens_per_minute": 5, "time_zone": "Moon/Base"}}]}]}`), nil,
			`router "/azure/a/": budget.time_zone "Moon/Base": not a time zone`},
		{"a budget in words", []byte(`{"pools": [{"ingress": "/azure/", "routers": [{"path": "/azure/a/", "budget": {"tokens_per_minute": "lots"}}]}]}`), nil,
			"decode pools: pools.routers.budget.tokens_per_minute: got a JSON string, want a whole number"},
		{"a negative budget in a document", doc(`[{"ingress": "/azure/", "routers": [{"path": "/azure/a/", "weight": 1, "budget": {"requests_per_minute": -3}}]}]`), nil,
			`router "/azure/a/": budget.requests_per_minute -3`},
		{"a spent rule that is none", []byte(`{"pools": [{"ingress": "/azure/", "budget_spent": "queue", "routers": [{"path": "/azure/a/"}]}]}`), nil,
			`pool "/azure/": budget_spent "queue": give "ingress"`},
		{"a pool budget that is negative", []byte(`{"pools": [{"ingress": "/azure/", "budget": {"tokens_per_minute": -5}, "routers": [{"path": "/azure/a/"}]}]}`), nil,
			`pool "/azure/": budget.tokens_per_minute -5`},
		{"a pool budget of spend over a router without a price", []byte(`{"pools": [{"ingress": "/azure/", "budget": {"spend_per_month": 900}, "routers": [
			{"path": "/azure/a/", "price": {"input": 1, "output": 1}}, {"path": "/azure/b/"}]}]}`), nil,
			`pool "/azure/": budget: it caps spend, but router "/azure/b/" has no price`},
		{"a pool budget's time zone that is none", doc(`[{"ingress": "/azure/", "budget": {"requests_per_minute": 5, "time_zone": "Moon/Base"}, "routers": [{"path": "/azure/a/", "weight": 1}]}]`), nil,
			`pool "/azure/": budget.time_zone "Moon/Base": not a time zone`},
		{"a pool budget of an unknown period", []byte(`{"pools": [{"ingress": "/azure/", "budget": {"tokens_per_hour": 5}, "routers": [{"path": "/azure/a/"}]}]}`), nil,
			`unknown field "tokens_per_hour"`},
		{"a pool budget NaN in a document", doc(`[{"ingress": "/azure/", "budget": {"spend_per_day": "NaN"}, "routers": [{"path": "/azure/a/", "weight": 1}]}]`), nil,
			"pools.budget.spend_per_day: got a JSON string"},
		{"an empty pool", []byte(`{"pools": [{"ingress": "/azure/", "routers": []}]}`), nil, `pool "/azure/" has no routers`},
		{"an empty pool in a document", doc(`[{"ingress": "/azure/", "routers": []}]`), nil, `pools[0] ("/azure/").routers: empty`},
		{"no pools", []byte(`{"pools": []}`), nil, "no pools: give at least one pool"},
		{"a policy that is no policy", []byte(`{"version": 1, "pools": [{"ingress": "/azure/", "routers": [{"path": "/azure/a/", "weight": 1}]}], "policy": {"disabled_time": "soon"}}`), nil, `policy.disabled_time: "soon" is not a duration`},
		{"a document of a newer broker", []byte(`{"version": 2, "pools": []}`), nil, "version 2: this broker reads version 1"},
		{"a file over 1 MB", big, nil, "larger than 1048576 bytes"},
		{"a router missing from gecholog's config", poolsJSON("/azure/gpt4/", "/azure/new/"), []string{"--gl-config", repoGLConfigFile}, `no router "/azure/new/", which pool "/azure/" chooses`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			is := is.New(t)
			path := writeFile(t, "pools.json", tc.file)
			msg := opFails(t, ops, append([]string{"config", "set", path}, tc.more...)...)
			saysFirst(t, "the error", msg, "config set "+path+": ")
			says(t, "the error", msg, tc.want)
			saysLast(t, "the error", msg, "; nothing written")
			is.Equal(latestRevision(t, s), uint64(1)) // nothing written
		})
	}
	is := is.New(t)
	says(t, "the error", opFails(t, ops, "config", "set"), "config set: give the FILE")
	says(t, "the error", opFails(t, ops, "config", "set", "/no/such/pools.json"), "no such file or directory")
	says(t, "the error", opFails(t, ops, "config"), "config: give a subcommand: show, set, history, diff or rollback")
	says(t, "the error", opFails(t, ops, "config", "sohw"), `config "sohw": the subcommands are show, set, history, diff and rollback`)
	// The same file passes the check when gecholog routes every router.
	out := op(t, ops, "config", "set", writeFile(t, "ok.json", poolsJSON("/azure/gpt4/", "/azure/gpt35turbo/")), "--gl-config", repoGLConfigFile)
	saysFirst(t, "set", out, "wrote revision 2 ")
	is.Equal(latestRevision(t, s), uint64(2))
	// Prices are carried, cached_input defaulting to input.
	out = op(t, ops, "config", "set", writeFile(t, "priced.json", []byte(`{"pools": [{"ingress": "/azure/", "routers": [
		{"path": "/azure/gpt4/", "price": {"input": 2.5, "output": 10}}, {"path": "/azure/gpt35turbo/"}]}]}`)))
	saysFirst(t, "set", out, "wrote revision 3 ")
	says(t, "set", out, "price /azure/gpt4/ none→input 2.5 output 10 cached_input 2.5")
	// So are budgets, and what a pool does when they are spent.
	out = op(t, ops, "config", "set", writeFile(t, "budgeted.json", []byte(`{"pools": [{"ingress": "/azure/", "budget_spent": "soonest", "routers": [
		{"path": "/azure/gpt4/", "price": {"input": 2.5, "output": 10}, "budget": {"tokens_per_minute": 100000, "spend_per_day": 50, "time_zone": "Europe/Stockholm"}},
		{"path": "/azure/gpt35turbo/"}]}]}`)))
	saysFirst(t, "set", out, "wrote revision 4 ")
	says(t, "set", out, "budget /azure/gpt4/ none→tokens_per_minute 100000, spend_per_day 50 (Europe/Stockholm)")
	says(t, "set", out, "/azure/: budget_spent ingress→soonest")
	// And a pool's own budget.
	out = op(t, ops, "config", "set", writeFile(t, "pool-budget.json", []byte(`{"pools": [{"ingress": "/azure/", "budget": {"spend_per_day": 80, "requests_per_minute": 600},
		"routers": [{"path": "/azure/gpt4/", "price": {"input": 2.5, "output": 10}}, {"path": "/azure/gpt35turbo/", "price": {"input": 0.5, "output": 1.5}}]}]}`)))
	saysFirst(t, "set", out, "wrote revision 5 ")
	says(t, "set", out, "/azure/: budget_spent soonest→ingress, budget none→requests_per_minute 600, spend_per_day 80, ")
	says(t, "show", op(t, ops, "config", "show", "--json"), `"budget": {`)
}

func TestConfigRevisionsThatAreNoneOrNoConfigurationAreSaidInOneLine(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	ops := env("NATS_URL", s.ClientURL())
	op(t, ops, "config", "set", writeFile(t, "a.json", poolsJSON("/azure/gpt4/")))

	for _, args := range [][]string{{"show", "--revision", "99"}, {"diff", "99"}, {"diff", "1", "99"}, {"rollback", "99"}} {
		says(t, "the error", opFails(t, ops, append([]string{"config"}, args...)...),
			"revision 99: bucket gl_broker_config keeps revisions 1 to 1 (the last 64 writes); broker config history lists them")
	}
	for _, args := range [][]string{{"show", "--revision", "two"}, {"diff", "two"}, {"rollback", "two"}} {
		says(t, "the error", opFails(t, ops, append([]string{"config"}, args...)...), `revision "two": not a revision number such as 3`)
	}
	says(t, "the error", opFails(t, ops, "config", "rollback", "0"), "revision 0: revisions count from 1")
	says(t, "the error", opFails(t, ops, "config", "diff"), "revision 1 is the first valid revision kept")
	says(t, "the error", opFails(t, ops, "config", "rollback"), "no valid revision before revision 1 to roll back to")

	// A document written by hand that every replica refuses, with an
	// escape in it for the terminal.
	_, js := configStore(t, s)
	b, err := js.KeyValue(context.Background(), kv.ConfigBucket("gl_broker"))
	is.NoErr(err)
	refused, err := b.Put(context.Background(), kv.ConfigKey, []byte("{\"version\": 1, \"by\": \"\x1b[31mmallory\", \"pools\": []}"))
	is.NoErr(err)
	out := op(t, ops, "config", "show")
	saysFirst(t, "show", out, fmt.Sprintf("revision %d of bucket gl_broker_config", refused))
	says(t, "show", out, "\nrefused by every replica: document: not JSON: invalid character '\\x1b' in string literal; the replicas run by revision 1, the newest valid one (broker config rollback 1 writes it again)\n")
	says(t, "show", out, "\nas written: {\"version\": 1, \"by\": \"\\u001b[31mmallory\"") // what it holds, escaped
	neverSays(t, "show", out, "\x1b")
	var shown map[string]any
	is.NoErr(json.Unmarshal([]byte(op(t, ops, "config", "show", "--json")), &shown))
	is.Equal(shown["in_force"], 1.0)                                                     // the revision the replicas keep
	saysFirst(t, "refused", fmt.Sprint(shown["refused"]), "document: not JSON")          // and why this one is refused
	says(t, "history", op(t, ops, "config", "history"), "  refused: document: not JSON") // history says so
	says(t, "the error", opFails(t, ops, "config", "diff"), fmt.Sprintf("revision %d is refused by every replica: document: not JSON", refused))
	says(t, "the error", opFails(t, ops, "config", "rollback", strconv.FormatUint(refused, 10)), fmt.Sprintf("revision %d is refused by every replica", refused))

	// A delete marker.
	is.NoErr(b.Delete(context.Background(), kv.ConfigKey))
	deleted := refused + 1
	out = op(t, ops, "config", "show")
	is.Equal(lines(out)[1], "a delete marker: the document was deleted by hand (e.g. with nats kv del); the replicas run by revision 1, the newest valid one (broker config rollback 1 writes it again)")
	saysFirst(t, "show", out, fmt.Sprintf("revision %d of bucket gl_broker_config", deleted))
	says(t, "the error", opFails(t, ops, "config", "diff", "1", strconv.FormatUint(deleted, 10)), fmt.Sprintf("revision %d is a delete marker", deleted))
	saysLast(t, "history", op(t, ops, "config", "history"), "deleted by hand: the replicas keep the last good revision\n")

	// Rolled back after both: revision 1 again, though it is in force.
	out = op(t, ops, "config", "rollback")
	saysFirst(t, "rollback", out, fmt.Sprintf("wrote revision %d of bucket gl_broker_config by ", deleted+1))
	is.Equal(lines(out)[1], "changed since revision 1: no change")
}

func TestConfigWithoutJetStreamOrBucketSaysSoInOneLine(t *testing.T) {
	const token = "t0ken-s3cret"
	s := natstest.Start(t, natstest.WithoutJetStream(), natstest.WithToken(token))
	ops := env("NATS_URL", s.ClientURL(), "NATS_TOKEN", token)
	file := writeFile(t, "a.json", poolsJSON("/azure/gpt4/"))
	for _, args := range [][]string{{"show"}, {"set", file}, {"history"}, {"diff"}, {"rollback"}} {
		msg := opFails(t, ops, append([]string{"config"}, args...)...)
		saysFirst(t, "the error", msg, "JetStream is not enabled on nats://127.0.0.1:")
		says(t, "the error", msg, "so there is no fleet configuration: each replica runs by its own pools file and settings")
		neverSays(t, "the error", msg, token)
	}

	s = natstest.Start(t)
	ops = env("NATS_URL", s.ClientURL())
	for _, args := range [][]string{{"show"}, {"history"}, {"diff"}, {"rollback"}} {
		msg := opFails(t, ops, append([]string{"config"}, args...)...)
		saysFirst(t, "the error", msg, "bucket gl_broker_config does not exist on nats://127.0.0.1:")
		says(t, "the error", msg, "write it with broker config set FILE, or start a replica")
	}
	configStore(t, s) // the bucket, empty
	for _, args := range [][]string{{"show"}, {"history"}, {"diff"}, {"rollback"}} {
		msg := opFails(t, ops, append([]string{"config"}, args...)...)
		saysFirst(t, "the error", msg, "bucket gl_broker_config on nats://127.0.0.1:")
		says(t, "the error", msg, "holds no configuration yet; write it with broker config set FILE, or start a replica")
	}
}

func TestConfigSetIsAppliedByEveryReplicaAndTheAddedRouterIsChosen(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	fleet := startFleet(t, s, 3, func(c *replica.Config) { c.FleetConfig = true })
	for _, r := range fleet.Replicas {
		is.Equal(r.Config().Revision, uint64(1)) // the replicas wrote the default pool as revision 1
	}
	ops := env("NATS_URL", s.ClientURL(), "USER", "alice")
	out := op(t, ops, "config", "set", writeFile(t, "pools.json", poolsJSON("/azure/gpt35turbo/", "/azure/gpt4/:5", "/azure/dud/", "/azure/new/:9")))
	saysFirst(t, "set", out, "wrote revision 2 ")
	is.Equal(lines(out)[1], "changed since revision 1: /azure/: weight /azure/gpt4/ 1→5, +/azure/new/ (weight 9)")
	for i, r := range fleet.Replicas {
		natstest.Eventually(t, 5*time.Second, func() bool { return r.Config().Revision == 2 }, "replica %d runs revision 2", i+1)
		b := r.Broker()
		is.True(slices.Contains(b.Routers("/azure/"), "/azure/new/")) // the added router is in the pool
		chosen := ""
		natstest.Eventually(t, 5*time.Second, func() bool {
			chosen = b.Members()[b.Choose([]byte("/azure/"))]
			return chosen == "/azure/new/"
		}, "replica %d chooses /azure/new/; it chose %s", i+1, &chosen)
	}
	says(t, "show", op(t, ops, "config", "show"), "\n  /azure/new/         weight 9  priority 0\n")
}
