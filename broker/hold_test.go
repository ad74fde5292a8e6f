package broker

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"
)

// A forged announcement on the news subject holds a router out for
// Config.AnnouncementHold at most, a manual one without an end as well;
// then the view follows the store again.
func TestAnAnnouncedDisableTheStoreNeverConfirmsEndsAfterTheHold(t *testing.T) {
	const hold = 200 * time.Millisecond
	for _, forged := range []Record{
		{Status: 502, Reason: "forged", At: time.Now(), Until: time.Now().Add(time.Hour), By: "mallory"},
		{Reason: "forged", At: time.Now(), By: "mallory", Manual: true},
	} {
		t.Run(fmt.Sprintf("manual=%v", forged.Manual), func(t *testing.T) {
			b, err := New(Config{Pools: DefaultPools(), Policy: Policy{DisabledTime: time.Hour}, ID: "replica-1", AnnouncementHold: hold})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close(context.Background())
			const dud = "/azure/dud/"
			out := func() bool { return !slices.Contains(b.Routers("/azure/"), dud) }
			forged.Router = dud
			b.Observe(Event{Router: dud, Entry: &Entry{Record: forged}, Provisional: true})
			if !out() {
				t.Fatal("an announced disable holds the router out at once")
			}
			start := time.Now()
			deadline := start.Add(10 * time.Second)
			for out() && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			if out() {
				t.Fatalf("still out %v after the announcement, the hold being %v", time.Since(start), hold)
			}
			if held := time.Since(start); held < hold/2 {
				t.Fatalf("held only %v, the hold being %v", held, hold)
			}
		})
	}
}

// Anyone may publish on the stats subject: forged replica names cost
// bounded memory, and a replica already known keeps being heard.
func TestAFloodOfForgedReplicasOnTheStatsSubjectIsBounded(t *testing.T) {
	b, err := New(Config{Pools: DefaultPools(), Policy: Policy{DisabledTime: time.Hour}, ID: "replica-1"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(context.Background())
	now := time.Now()
	b.Merge("replica-2", now, []Counts{{Router: "/azure/gpt4/", Chosen: 1}})
	for i := range 2 * maxPeers {
		b.Merge(fmt.Sprintf("forged-%d", i), now, []Counts{{Router: "/azure/gpt4/", Chosen: 1}})
	}
	b.Merge("replica-2", now, []Counts{{Router: "/azure/gpt4/", Chosen: 7}})
	b.fleet.mu.Lock()
	defer b.fleet.mu.Unlock()
	if n := len(b.fleet.peers); n != maxPeers {
		t.Fatalf("%d replicas kept, want the bound %d", n, maxPeers)
	}
	if got := b.fleet.peers["replica-2"].counts["/azure/gpt4/"].Chosen; got != 7 {
		t.Fatalf("a known replica's new counts: chosen %d, want 7", got)
	}
}

// An announced disable shorter than the hold ends at its Until and the view
// goes back to the store's word: it never goes on probation, which nothing
// in the store backs (a probe claim would find nothing to claim, again and
// again).
func TestAShortAnnouncedDisableTheStoreNeverConfirmsEndsAtItsUntil(t *testing.T) {
	b, err := New(Config{Pools: DefaultPools(), Policy: Policy{DisabledTime: time.Hour}, ID: "replica-1"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(context.Background())
	const dud = "/azure/dud/"
	out := func() bool { return !slices.Contains(b.Routers("/azure/"), dud) }
	// The view already holds a memo of an earlier disable, as most do.
	b.Observe(Event{Router: dud, Revision: 7, Memo: &Record{Router: dud, Level: 1, Ended: time.Now()}})
	start := time.Now()
	forged := Record{Router: dud, Status: 502, Reason: "forged", At: start, Until: start.Add(300 * time.Millisecond), By: "mallory"}
	b.Observe(Event{Router: dud, Entry: &Entry{Record: forged}, Provisional: true})
	if !out() {
		t.Fatal("an announced disable holds the router out at once")
	}
	deadline := start.Add(10 * time.Second)
	for out() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if out() {
		t.Fatalf("still out %v after an announced disable of 300ms", time.Since(start))
	}
	if v := b.View(time.Now()); len(v) > 0 {
		for _, r := range v {
			if r.Router == dud && (r.Phase != Enabled || r.Provisional) {
				t.Fatalf("after the announced disable ended: %s provisional=%v, want enabled from the store's word", r.Phase, r.Provisional)
			}
		}
	}
}
