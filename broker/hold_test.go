package broker

import (
	"context"
	"slices"
	"testing"
	"time"
)

// A forged announcement on the news subject holds a router out for
// provisionalHold at most; then the view follows the store again.
func TestAnAnnouncedDisableTheStoreNeverConfirmsEndsAfterTheHold(t *testing.T) {
	defer func(d time.Duration) { provisionalHold = d }(provisionalHold)
	provisionalHold = 200 * time.Millisecond
	b, err := New(Config{Pools: DefaultPools(), Policy: Policy{DisabledTime: time.Hour}, ID: "replica-1"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(context.Background())
	const dud = "/azure/dud/"
	out := func() bool { return !slices.Contains(b.Routers("/azure/"), dud) }
	forged := Record{Router: dud, Status: 502, Reason: "forged", At: time.Now(), Until: time.Now().Add(time.Hour), By: "mallory"}
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
		t.Fatalf("still out %v after the announcement, the hold being %v", time.Since(start), provisionalHold)
	}
	if held := time.Since(start); held < provisionalHold/2 {
		t.Fatalf("held only %v, the hold being %v", held, provisionalHold)
	}
}
