package replica

import (
	"encoding/binary"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
	"github.com/nats-io/nats.go"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/testutil/natstest"
)

// digestsOf is a message of digests from the replica named from.
func digestsOf(from string, hs ...heard) []byte {
	b := binary.AppendUvarint(nil, uint64(len(from)))
	b = append(b, from...)
	b = binary.AppendUvarint(b, uint64(len(hs)))
	for i := range hs {
		b = appendHeard(b, &hs[i])
	}
	return b
}

// someHeard are digests of every shape: limits said or not, keyed or
// not, each usage state.
func someHeard() []heard {
	at := time.Date(2026, 12, 4, 22, 0, 0, 123, time.UTC)
	return []heard{
		{ingress: []byte("/azure/"), router: []byte("/azure/gpt4/"), latency: 123456789, usage: broker.Usage{State: broker.UsageKnown, Input: 1200, Output: 300, CachedInput: 1024},
			limits:  &broker.RateLimits{RemainingRequests: 25, LimitRequests: 100, RemainingTokens: -1, LimitTokens: -1, ResetRequests: at.Add(time.Minute), Sent: at.Add(-time.Second), Answered: at},
			session: 0xdeadbeefcafef00d, keyed: true, began: at.Add(-time.Second)},
		{ingress: []byte("/azure/"), router: []byte("/elsewhere/"), usage: broker.Usage{State: broker.UsageUnknown}},
		{ingress: []byte(""), router: []byte("/azure/dud/"), latency: 0, usage: broker.Usage{State: broker.UsageUnreadable}, session: 0, keyed: true},
		{ingress: []byte("/p/"), router: []byte("/p/r/"), latency: time.Duration(1 << 62),
			limits: &broker.RateLimits{RemainingRequests: -1, LimitRequests: -1, RemainingTokens: broker.MaxTokens, LimitTokens: broker.MaxTokens, ResetTokens: at}},
	}
}

func TestADigestReadsBackAsItWasWritten(t *testing.T) {
	is := is.New(t)
	want := someHeard()
	from, got, err := readDigests(digestsOf("replica-7", want...), nil)
	is.NoErr(err)
	is.Equal(from, "replica-7")
	is.Equal(len(got), len(want))
	for i := range want {
		w, g := want[i], got[i]
		is.Equal(string(g.ingress), string(w.ingress))
		is.Equal(string(g.router), string(w.router))
		is.Equal(g.latency, w.latency)
		is.Equal(g.usage, w.usage)
		is.Equal(g.keyed, w.keyed)
		is.Equal(g.session, w.session)
		is.True(g.began.Equal(w.began) && g.began.IsZero() == w.began.IsZero())
		is.Equal(g.limits == nil, w.limits == nil)
		if w.limits != nil {
			gl, wl := *g.limits, *w.limits
			for _, ts := range [][2]*time.Time{{&gl.ResetRequests, &wl.ResetRequests}, {&gl.ResetTokens, &wl.ResetTokens}, {&gl.Sent, &wl.Sent}, {&gl.Answered, &wl.Answered}} {
				is.True(ts[0].Equal(*ts[1]) && ts[0].IsZero() == ts[1].IsZero()) // to the nanosecond; a zero time stays zero
				*ts[0], *ts[1] = time.Time{}, time.Time{}
			}
			is.Equal(gl, wl)
		}
	}
	// A transaction is about a hundred bytes, not its 8 KB.
	is.True(len(digestsOf("r", want[0])) < 100)
}

func TestADigestThatCannotBeReadWholeIsRefusedWhole(t *testing.T) {
	whole := digestsOf("replica-1", someHeard()...)
	for n := range len(whole) {
		if _, hs, err := readDigests(whole[:n], nil); err == nil || len(hs) != 0 {
			t.Fatalf("cut to %d of %d bytes: read %d digests, error %v", n, len(whole), len(hs), err)
		}
	}
	one := func(h heard) []byte { return digestsOf("f", h) }
	count := func(v int64) []byte {
		return one(heard{router: []byte("/r/"), usage: broker.Usage{State: broker.UsageKnown, Input: v}})
	}
	tooMany := binary.AppendUvarint(binary.AppendUvarint(nil, 1), maxDigests+1)
	tooMany = append(tooMany[:1], append([]byte("f"), tooMany[1:]...)...)
	for name, data := range map[string][]byte{
		"nothing":              nil,
		"a byte too many":      append(digestsOf("f", someHeard()...), 0),
		"more than maxDigests": tooMany,
		"a path too long":      one(heard{router: make([]byte, maxDigestPath+1)}),
		"an ID too long":       digestsOf(string(make([]byte, MaxID+1))),
		"a flag unknown":       append(binary.AppendUvarint(append(binary.AppendUvarint(nil, 1), 'f'), 1), 4, 0, 0, 0, 0),
		"a usage state unknown": append(binary.AppendUvarint(append(binary.AppendUvarint(nil, 1), 'f'), 1),
			0, byte(broker.UsageUnreadable)+1, 0, 0, 0),
		"a count below -1":         count(-2),
		"a count beyond MaxTokens": count(broker.MaxTokens + 1),
		"a number longer than 64 bits": append(binary.AppendUvarint(append(binary.AppendUvarint(nil, 1), 'f'), 1),
			0, 0, 0, 0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01),
	} {
		if _, hs, err := readDigests(data, nil); err == nil || len(hs) != 0 {
			t.Errorf("%s: read %d digests, error %v", name, len(hs), err)
		}
	}
}

func FuzzReadDigests(f *testing.F) {
	f.Add(digestsOf("replica-1", someHeard()...))
	f.Add(digestsOf("", heard{}))
	f.Add([]byte{1, 'f', 1, 3, 1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		from, hs, err := readDigests(data, nil)
		if err != nil {
			return
		}
		// What was read writes back to what reads the same.
		from2, hs2, err := readDigests(digestsOf(from, hs...), nil)
		if err != nil || from2 != from || len(hs2) != len(hs) {
			t.Fatalf("read back: %q, %d digests, %v; first %q, %d", from2, len(hs2), err, from, len(hs))
		}
		for i := range hs {
			if string(hs[i].router) != string(hs2[i].router) || hs[i].latency != hs2[i].latency || hs[i].usage != hs2[i].usage ||
				hs[i].session != hs2[i].session || (hs[i].limits == nil) != (hs2[i].limits == nil) {
				t.Fatalf("digest %d read back differs", i)
			}
		}
	})
}

// TestForgedDigestsAreBoundedAndLoggedAndTheReplicaServesOn publishes on
// the stats subject what anyone who may publish there can: bytes that
// are no digest, a digest of a version to come, and a well-formed one
// whose latency is beyond the in-flight bound. The first two are counted
// and said in one line, the third taken with its latency ignored, as a
// transaction's would be; the replica answers calls throughout.
func TestForgedDigestsAreBoundedAndLoggedAndTheReplicaServesOn(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	var logs syncLog
	r, stop := runOne(t, s.ClientURL(), &logs)
	nc := natstest.Connect(t, s)
	forge := func(version string, data []byte) {
		t.Helper()
		is.NoErr(nc.PublishMsg(&nats.Msg{Subject: StatsSubject(DefaultBucket), Header: nats.Header{digestHeader: []string{version}}, Data: data}))
	}
	serves := func() {
		t.Helper()
		m, err := nc.Request(DefaultSubject, []byte(`{"gl_path":"/azure/"}`), 5*time.Second)
		is.NoErr(err)
		var reply struct {
			Path string `json:"gl_path"`
		}
		is.NoErr(json.Unmarshal(m.Data, &reply))
		is.True(reply.Path != "") // a router chosen
	}

	forge(digestVersion, []byte("\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff not a digest"))
	forge("9", digestsOf("forger"))
	natstest.Eventually(t, 5*time.Second, func() bool { return r.Transactions().BadDigests == 2 }, "both counted")
	said := linesOf(logs.String(), "ignoring a message of transactions' digests that cannot be read")
	is.Equal(len(said), 1)                                         // once in 10 s, not once a message
	is.True(strings.Contains(said[0]["error"].(string), "number")) // why
	is.Equal(said[0]["subject"], StatsSubject(DefaultBucket))      // where
	serves()

	now := time.Now()
	forge(digestVersion, digestsOf("forger", heard{ingress: []byte("/azure/"), router: []byte("/azure/gpt4/"), latency: time.Duration(1 << 62),
		limits: &broker.RateLimits{RemainingRequests: 25, LimitRequests: 100, RemainingTokens: -1, LimitTokens: -1, ResetRequests: now.Add(1000 * time.Hour), Answered: now}}))
	forge(digestVersion, digestsOf("replica-1", heard{router: []byte("/azure/gpt35turbo/"), latency: time.Second})) // its own name: already taken
	natstest.Eventually(t, 5*time.Second, func() bool { return r.Transactions().Shared == 1 }, "the forged digest taken")
	c := r.Transactions()
	is.Equal(c.OutOfBounds, uint64(1)) // its latency, ignored
	v := viewByRouter(r.Broker(), "/azure/gpt4/")
	is.True(!v.LatencyKnown)                                                                                                // no sample of 146 years
	is.True(v.HeadroomKnown && v.Headroom == 0.25)                                                                          // the rest of it taken, as a transaction's
	is.True(!viewByRouter(r.Broker(), "/azure/gpt35turbo/").LatencyKnown)                                                   // the one in its own name not taken twice
	is.Equal(len(linesOf(logs.String(), "ignoring a value of a transaction from gecholog's log that is out of bounds")), 1) // said
	serves()
	is.NoErr(stop())
}

func viewByRouter(b *broker.Broker, router string) broker.RouterView {
	for _, v := range b.View(time.Now()) {
		if v.Router == router {
			return v
		}
	}
	return broker.RouterView{}
}

// linesOf are the lines of a JSON log whose message is msg.
func linesOf(log, msg string) []map[string]any {
	var out []map[string]any
	for _, l := range strings.Split(log, "\n") {
		var line map[string]any
		if json.Unmarshal([]byte(l), &line) == nil && line["msg"] == msg {
			out = append(out, line)
		}
	}
	return out
}
