package broker_test

import (
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
)

func TestViewShowsWhatTheReplicaActsOnAndWhatTheStoreSays(t *testing.T) {
	is := is.New(t)
	b, _ := newBroker(t, broker.Config{Policy: broker.Policy{DisabledTime: time.Minute}})
	now := time.Now()
	forged := broker.Record{Router: "/azure/dud/", Status: 502, At: now, Until: now.AddDate(73, 0, 0), By: "someone"}
	b.Observe(broker.Event{Router: forged.Router, Entry: &broker.Entry{Record: forged, Revision: 3, Created: now}, Revision: 3, Created: now})
	b.Observe(provisional(broker.Record{Router: "/azure/gpt4/", Status: 503, At: now, Until: now.Add(time.Minute), By: "replica-2"}))
	pick(b, "/azure/")

	v := b.View(time.Now())
	is.Equal(len(v), 3) // every router of the pool, in its order
	is.Equal([]string{v[0].Router, v[1].Router, v[2].Router}, []string{"/azure/gpt35turbo/", "/azure/gpt4/", "/azure/dud/"})
	is.Equal(v[0].Phase, broker.Enabled)
	is.True(v[0].Record == nil)      // an enabled router shows no record
	is.Equal(v[0].Chosen, uint64(1)) // the only router left to choose

	is.Equal(v[1].Phase, broker.Disabled)
	is.True(v[1].Provisional) // announced, not in the store yet
	is.Equal(v[1].Record.By, "replica-2")

	dud := v[2]
	is.Equal(dud.Phase, broker.Disabled)
	is.True(!dud.Provisional)                                                // the bucket's word, not an announcement
	is.True(dud.Record.Until.Before(now.Add(8*time.Minute + 2*time.Second))) // what every replica acts on: the longest disable
	is.True(dud.Stored != nil)                                               // and what the store says
	is.Equal(dud.Stored.Until, forged.Until)
}
