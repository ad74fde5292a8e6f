package broker_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
)

// TestTakenSinceTellsTheChangesTheViewTookNewestFirst: each change taken
// from the store is told with its revision and the phase the view holds,
// newest first, at most n, and only those taken since the time asked; a
// word of the store the view already holds is no new change.
func TestTakenSinceTellsTheChangesTheViewTookNewestFirst(t *testing.T) {
	is := is.New(t)
	b, _ := newBroker(t, broker.Config{})
	before := time.Now()
	is.Equal(len(b.TakenSince(before, 10)), 0) // nothing taken yet

	manual := broker.Record{Router: "/azure/gpt4/", Manual: true, At: time.Now(), By: "alice"}
	b.Observe(broker.Event{Router: manual.Router, Entry: &broker.Entry{Record: manual, Revision: 7}, Revision: 7})
	auto := broker.Record{Router: "/azure/dud/", Status: 502, At: time.Now(), Until: time.Now().Add(time.Hour), By: "replica-2"}
	b.Observe(broker.Event{Router: auto.Router, Entry: &broker.Entry{Record: auto, Revision: 9}, Revision: 9})
	b.Observe(broker.Event{Router: manual.Router, Entry: &broker.Entry{Record: manual, Revision: 7}, Revision: 7}) // again: held already
	b.Observe(broker.Event{Router: "/azure/unknown/", Entry: &broker.Entry{Record: auto, Revision: 10}, Revision: 10})

	is.Equal(b.TakenSince(before, 10), []broker.Taken{
		{Router: "/azure/dud/", Revision: 9, Phase: broker.Disabled},
		{Router: "/azure/gpt4/", Revision: 7, Phase: broker.Manual},
	}) // newest first; no router the pools lack
	is.Equal(b.TakenSince(before, 1), []broker.Taken{{Router: "/azure/dud/", Revision: 9, Phase: broker.Disabled}}) // at most n

	// Enabled by an operator: the enable is told.
	b.Observe(broker.Event{Router: manual.Router, Revision: 11})
	is.True(slices.Contains(b.TakenSince(before, 10), broker.Taken{Router: "/azure/gpt4/", Revision: 11, Phase: broker.Enabled}))
	is.Equal(len(b.TakenSince(time.Now().Add(time.Second), 10)), 0) // none taken since
}

// TestTakenSinceKeepsTheNNewestOfMany: of fifty routers taken one after
// another, in no order of their paths, the ten taken last, newest first.
func TestTakenSinceKeepsTheNNewestOfMany(t *testing.T) {
	is := is.New(t)
	pool := broker.Pool{Ingress: "/many/"}
	for i := range 50 {
		pool.Routers = append(pool.Routers, broker.Router{Path: fmt.Sprintf("/many/r%02d/", i), Weight: 1})
	}
	b, _ := newBroker(t, broker.Config{Pools: []broker.Pool{pool}})
	before := time.Now()
	var order []string
	for _, i := range rand.Perm(50) {
		router := fmt.Sprintf("/many/r%02d/", i)
		rec := broker.Record{Router: router, Status: 502, At: time.Now(), Until: time.Now().Add(time.Hour), By: "replica-2"}
		b.Observe(broker.Event{Router: router, Entry: &broker.Entry{Record: rec, Revision: uint64(len(order) + 1)}, Revision: uint64(len(order) + 1)})
		order = append(order, router)
	}
	got := b.TakenSince(before, 10)
	is.Equal(len(got), 10)
	for i, tk := range got {
		is.Equal(tk.Router, order[len(order)-1-i]) // the newest first
		is.Equal(tk.Phase, broker.Disabled)
	}
}
