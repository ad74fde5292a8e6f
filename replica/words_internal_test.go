package replica

import (
	"encoding/binary"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
	"github.com/nats-io/nats.go"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/testutil/natstest"
)

// wordsOf is a message of words.
func wordsOf(ws ...word) []byte {
	b := binary.AppendUvarint(nil, uint64(len(ws)))
	for _, w := range ws {
		b = appendWord(b, w.id, w.at, w.every, w.counts)
	}
	return b
}

func someWords() []word {
	at := time.Unix(1_700_000_000, 123456789)
	return []word{
		{id: "replica-1", at: at, every: time.Second, counts: []broker.Counts{
			{Router: "/azure/gpt4/", Chosen: 12, Reported: 10, Calls: 40, Failures: 2, LastSuccess: at.Add(-time.Second),
				Failing: []time.Time{at.Add(-500 * time.Millisecond), at.Add(-100 * time.Millisecond)}},
			{Router: "/azure/gpt35turbo/", Chosen: 1},
		}},
		{id: "replica-2", at: at.Add(time.Millisecond), every: 2 * time.Second},
	}
}

func TestAWordReadsBackAsItWasWritten(t *testing.T) {
	is := is.New(t)
	want := someWords()
	var text texts
	got, err := readWords(wordsOf(want...), nil, &text)
	is.NoErr(err)
	is.Equal(len(got), len(want))
	for i := range want {
		is.Equal(got[i].id, want[i].id)
		is.True(got[i].at.Equal(want[i].at))
		is.Equal(got[i].every, want[i].every)
		is.Equal(len(got[i].counts), len(want[i].counts))
		for j, c := range want[i].counts {
			is.True(got[i].counts[j].Equal(c))
		}
	}
	// A heartbeat told is held within a second and broker.MaxHeartbeat.
	for told, held := range map[time.Duration]time.Duration{0: time.Second, time.Hour: broker.MaxHeartbeat} {
		ws, err := readWords(wordsOf(word{id: "r", every: told}), nil, nil)
		is.NoErr(err)
		is.Equal(ws[0].every, held)
	}
	// A word of three routers is small: about 30 bytes a router.
	is.True(len(wordsOf(word{id: "replica-1", at: time.Now(), every: time.Second, counts: []broker.Counts{
		{Router: "/azure/gpt4/", Chosen: 1000, Reported: 990}, {Router: "/azure/gpt35turbo/", Chosen: 1000, Reported: 990},
		{Router: "/azure/dud/", Chosen: 1000, Reported: 990}}})) < 100)
}

func TestAMessageOfWordsThatCannotBeReadWholeIsRefusedWhole(t *testing.T) {
	whole := wordsOf(someWords()...)
	for n := range len(whole) {
		if ws, err := readWords(whole[:n], nil, nil); err == nil || len(ws) != 0 {
			t.Fatalf("cut to %d of %d bytes: read %d words, error %v", n, len(whole), len(ws), err)
		}
	}
	routers := func(n uint64) []byte {
		b := binary.AppendUvarint(nil, 1)
		b = append(binary.AppendUvarint(b, 1), 'r')
		b = binary.AppendVarint(b, 0)
		b = binary.AppendUvarint(b, 0)
		return binary.AppendUvarint(b, n)
	}
	failing := make([]time.Time, broker.MaxFailing+1)
	for name, data := range map[string][]byte{
		"nothing":                 nil,
		"a byte too many":         append(wordsOf(someWords()...), 0),
		"more than maxWords":      binary.AppendUvarint(nil, maxWords+1),
		"a name empty":            wordsOf(word{}),
		"a name too long":         wordsOf(word{id: strings.Repeat("r", MaxID+1)}),
		"more than maxWordRouter": routers(maxWordRouters + 1),
		"a path too long":         wordsOf(word{id: "r", counts: []broker.Counts{{Router: strings.Repeat("/", maxDigestPath+1)}}}),
		"too many failures":       wordsOf(word{id: "r", counts: []broker.Counts{{Router: "/r/", Failing: failing}}}),
		"a number longer than 64 bits": append(binary.AppendUvarint(append(binary.AppendUvarint(nil, 1), 1), 'r'),
			0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01),
	} {
		if ws, err := readWords(data, nil, nil); err == nil || len(ws) != 0 {
			t.Errorf("%s: read %d words, error %v", name, len(ws), err)
		}
	}
}

func FuzzReadWords(f *testing.F) {
	f.Add(wordsOf(someWords()...))
	f.Add(wordsOf(word{id: "r"}))
	f.Add([]byte{1, 1, 'r', 0, 0, 1, 3, '/', 'r', '/', 2, 2, 2, 2, 0, 1, 4})
	f.Fuzz(func(t *testing.T, data []byte) {
		var text texts
		ws, err := readWords(data, nil, &text)
		if err != nil {
			return
		}
		// What was read writes back to what reads the same.
		ws2, err := readWords(wordsOf(ws...), nil, nil)
		if err != nil || len(ws2) != len(ws) {
			t.Fatalf("read back: %d words, %v; first %d", len(ws2), err, len(ws))
		}
		for i := range ws {
			if ws[i].id != ws2[i].id || !ws[i].at.Equal(ws2[i].at) || ws[i].every != ws2[i].every || len(ws[i].counts) != len(ws2[i].counts) {
				t.Fatalf("word %d read back differs", i)
			}
			for j := range ws[i].counts {
				if !ws[i].counts[j].Equal(ws2[i].counts[j]) {
					t.Fatalf("word %d, router %d read back differs", i, j)
				}
			}
		}
	})
}

// TestForgedWordsAreBoundedAndLoggedAndTheReplicaServesOn publishes on the
// stats subject what anyone who may publish there can: bytes that are no
// words, words of a version to come, and a well-formed word whose counts
// are beyond every bound. The first two are counted and said in one line,
// the third merged within the bounds; the replica answers calls
// throughout.
func TestForgedWordsAreBoundedAndLoggedAndTheReplicaServesOn(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	var logs syncLog
	r, stop := runOne(t, s.ClientURL(), &logs)
	nc := natstest.Connect(t, s)
	forge := func(version string, data []byte) {
		t.Helper()
		is.NoErr(nc.PublishMsg(&nats.Msg{Subject: StatsSubject(DefaultBucket), Header: nats.Header{countsHeader: []string{version}}, Data: data}))
	}
	bad := func() uint64 { r.words.mu.Lock(); defer r.words.mu.Unlock(); return r.words.bad }

	forge(countsVersion, []byte("\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff not words"))
	forge("9", wordsOf(someWords()...))
	natstest.Eventually(t, 5*time.Second, func() bool { return bad() == 2 }, "both counted")
	said := linesOf(logs.String(), "ignoring a message of the replicas' counts that cannot be read")
	is.Equal(len(said), 1)                                         // once in 10 s, not once a message
	is.True(strings.Contains(said[0]["error"].(string), "number")) // why
	is.Equal(said[0]["subject"], StatsSubject(DefaultBucket))      // where
	serves(t, nc)

	forge(countsVersion, wordsOf(word{id: "forger", at: time.Now(), every: time.Hour, counts: []broker.Counts{
		{Router: "/azure/gpt4/", Chosen: 1 << 62, Reported: -5, Calls: 10, Failures: 1 << 50}}}))
	natstest.Eventually(t, 5*time.Second, func() bool { return r.Broker().Peers() == 1 }, "the forged word merged")
	v := viewByRouter(r.Broker(), "/azure/gpt4/")
	// A trillion, held to what a replica may tell, and the call served
	// above if it went there.
	is.True(v.InFlight == 1<<40 || v.InFlight == 1<<40+1)
	serves(t, nc)
	is.NoErr(stop())
}

// serves asks the replica for a router and fails unless one is chosen.
func serves(t *testing.T, nc *nats.Conn) {
	t.Helper()
	m, err := nc.Request(DefaultSubject, []byte(`{"gl_path":"/azure/"}`), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(m.Data), `"gl_path":"/azure/`) {
		t.Fatalf("no router chosen: %s", m.Data)
	}
}

// BenchmarkHearARelayedMessage is what a replica of a fleet of 20 spends
// on each message from the relay: 19 words of 3 routers, read and merged.
func BenchmarkHearARelayedMessage(b *testing.B) {
	br, err := broker.New(broker.Config{ID: "me", Pools: broker.DefaultPools(), Policy: broker.Policy{DisabledTime: time.Minute}})
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	msgs := make([][]byte, 2)
	for k := range msgs {
		var ws []word
		for i := range 19 {
			var counts []broker.Counts
			for _, p := range []string{"/azure/gpt35turbo/", "/azure/gpt4/", "/azure/dud/"} {
				counts = append(counts, broker.Counts{Router: p, Chosen: int64(100 + k + i), Reported: 90, Calls: 90})
			}
			ws = append(ws, word{id: fmt.Sprintf("replica-%02d", i), at: now.Add(time.Duration(k)), every: time.Second, counts: counts})
		}
		msgs[k] = wordsOf(ws...)
	}
	var ws []word
	var text texts
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		ws, err = readWords(msgs[i%2], ws, &text)
		if err != nil {
			b.Fatal(err)
		}
		for _, w := range ws {
			br.MergeTold(w.id, w.at.Add(time.Duration(i)), now, w.every, w.counts)
		}
	}
}
