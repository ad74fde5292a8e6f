package kv_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/kv"
)

func fleetConfig(routers ...string) kv.FleetConfig {
	p := broker.Pool{Ingress: "/azure/"}
	for _, r := range routers {
		p.Routers = append(p.Routers, broker.Router{Path: r, Weight: 1})
	}
	return kv.NewFleetConfig([]broker.Pool{p}, broker.Policy{DisabledTime: time.Minute}, 0)
}

func TestAFleetConfigurationRoundTripsAndSaysWhatItConfigures(t *testing.T) {
	is := is.New(t)
	c := fleetConfig("/azure/a/", "/azure/b/")
	ctx := context.Background()
	s, err := kv.OpenConfig(ctx, natstest.JetStream(t, natstest.Start(t)), "gl_broker_config", true)
	is.NoErr(err)
	c.By = "alice"
	rev, err := s.Write(ctx, c, 0, nil)
	is.NoErr(err)
	got, err := s.Latest(ctx)
	is.NoErr(err)
	is.NoErr(got.Err)
	is.Equal(got.Revision, rev)
	is.True(got.Config.Same(c)) // the same content
	pools, pol, bound, err := got.Config.Settings()
	is.NoErr(err)
	is.Equal(pools[0].Routers[1].Path, "/azure/b/")
	is.Equal(pol.DisabledTime, time.Minute)
	is.Equal(bound, broker.DefaultInFlightBound)
}

func TestAFleetConfigurationCarriesPrices(t *testing.T) {
	is := is.New(t)
	price := &broker.Price{Input: 2.5, Output: 10, CachedInput: 1.25}
	c := kv.NewFleetConfig([]broker.Pool{{Ingress: "/azure/", Routers: []broker.Router{{Path: "/azure/a/", Weight: 1, Price: price}, {Path: "/azure/b/", Weight: 1}}}},
		broker.Policy{DisabledTime: time.Minute}, 0)
	data, err := json.Marshal(c)
	is.NoErr(err)
	is.True(strings.Contains(string(data), `"price":{"input":2.5,"output":10,"cached_input":1.25}`)) // written whole
	got, err := kv.DecodeFleetConfig(data)                                                           // the strict reader takes it
	is.NoErr(err)
	pools, _, _, err := got.Settings()
	is.NoErr(err)
	is.Equal(*pools[0].Routers[0].Price, *price) // read back
	is.Equal(pools[0].Routers[1].Price, nil)     // none given
	is.True(!got.Same(fleetConfig("/azure/a/", "/azure/b/")))

	// A document written by hand without cached_input means input's.
	got, err = kv.DecodeFleetConfig([]byte(`{"version":1,"pools":[{"ingress":"/azure/","routers":[{"path":"/azure/a/","weight":1,"price":{"input":3,"output":15}}]}],"policy":{"disabled_time":"1m"}}`))
	is.NoErr(err)
	pools, _, _, err = got.Settings()
	is.NoErr(err)
	is.Equal(*pools[0].Routers[0].Price, broker.Price{Input: 3, Output: 15, CachedInput: 3})
	read, _ := json.Marshal(got.Pools)
	written, _ := json.Marshal(kv.NewFleetConfig(pools, broker.Policy{DisabledTime: time.Minute}, 0).Pools)
	is.Equal(string(read), string(written)) // the same pools as a document that says cached_input
}

func TestTheLoserOfTwoWritesIsToldWhichRevisionWonWhenAndByWhom(t *testing.T) {
	is := is.New(t)
	ctx := context.Background()
	s, err := kv.OpenConfig(ctx, natstest.JetStream(t, natstest.Start(t)), "c", true)
	is.NoErr(err)
	first, err := s.Write(ctx, fleetConfig("/azure/a/"), 0, nil)
	is.NoErr(err)
	var wins atomic.Int32
	var lost atomic.Value
	var wg sync.WaitGroup
	for _, who := range []string{"alice", "bob"} {
		wg.Go(func() {
			c := fleetConfig("/azure/" + who + "/")
			c.By = who
			if _, err := s.Write(ctx, c, first, nil); err == nil {
				wins.Add(1)
			} else {
				lost.Store(err)
			}
		})
	}
	wg.Wait()
	is.Equal(wins.Load(), int32(1)) // one write between them
	err = lost.Load().(error)
	var ce *kv.ConflictError
	is.True(errors.As(err, &ce))            // a conflict
	is.True(errors.Is(err, kv.ErrConflict)) // as callers test for
	msg := err.Error()
	is.True(strings.Contains(msg, "revision 2 was written at"))                   // which and when
	is.True(strings.Contains(msg, "by alice") || strings.Contains(msg, "by bob")) // the loser learns who won
}

func TestADocumentAReplicaCouldMisreadIsRefusedNamingTheField(t *testing.T) {
	valid := `{"version":1,"pools":[{"ingress":"/azure/","routers":[{"path":"/azure/a/","weight":1}]}],"policy":{"disabled_time":"1m"},"inflight_bound":"5m"}`
	for _, c := range []struct{ doc, want string }{
		{`{"version":1,`, "not JSON"},
		{strings.Replace(valid, `"version":1`, `"version":2`, 1), "version 2: this broker reads version 1"},
		{strings.Replace(valid, `"version":1,`, ``, 1), "version: missing"},
		{strings.Replace(valid, `"inflight_bound"`, `"colour":"red","inflight_bound"`, 1), `"colour": unknown field`},
		{strings.Replace(valid, `"weight":1`, `"weight":"NaN"`, 1), "pools.routers.weight"},
		{strings.Replace(valid, `"weight":1`, `"weight":1.5`, 1), "pools.routers.weight"},
		{strings.Replace(valid, `"weight":1`, `"weight":0`, 1), "weight 0 is outside"},
		{strings.Replace(valid, `"weight":1`, `"weight":1,"price":{"input":-1,"output":10}`, 1), `router "/azure/a/": price.input -1: a price is 0 or more`},
		{strings.Replace(valid, `"weight":1`, `"weight":1,"price":{"input":1,"output":"ten"}`, 1), "pools.routers.price.output"},
		{strings.Replace(valid, `"weight":1`, `"weight":1,"price":{"input":1,"output":NaN}`, 1), "not JSON"},
		{strings.Replace(valid, `"weight":1`, `"weight":1,"price":{"input":1,"output":1,"currency":"EUR"}`, 1), `"currency": unknown field`},
		{strings.Replace(valid, `{"path":"/azure/a/","weight":1}`, ``, 1), "pools[0] (\"/azure/\").routers: empty"},
		{strings.Replace(valid, `[{"ingress":"/azure/","routers":[{"path":"/azure/a/","weight":1}]}]`, `[]`, 1), "pools: empty"},
		{strings.Replace(valid, `"1m"`, `"soon"`, 1), "policy.disabled_time"},
		{strings.Replace(valid, `"disabled_time":"1m"`, `"threshold":1`, 1), `policy.disabled_time: missing; give a duration such as 10m, or "never_disable": true`},
		{valid[:len(valid)-1] + `,"by":"` + strings.Repeat("x", 2<<20) + `"}`, "larger than 1048576"},
	} {
		_, err := kv.DecodeFleetConfig([]byte(c.doc))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("document %.80q: got %v, want an error saying %q", c.doc, err, c.want)
		}
	}
	if _, err := kv.DecodeFleetConfig([]byte(valid)); err != nil {
		t.Errorf("valid document refused: %v", err)
	}
}

func TestTheWatcherDeliversNewRevisionsAndFollowsANewBucketAfterADelete(t *testing.T) {
	is := is.New(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	js := natstest.JetStream(t, natstest.Start(t))
	s, err := kv.OpenConfig(ctx, js, "c", true)
	is.NoErr(err)
	_, err = s.Write(ctx, fleetConfig("/azure/a/"), 0, nil)
	is.NoErr(err)
	got := make(chan kv.ConfigEntry, 16)
	var gone atomic.Int32
	stop, err := s.WatchConfig(ctx, 0, func(e kv.ConfigEntry) { got <- e }, func() { gone.Add(1) })
	is.NoErr(err)
	defer stop()
	next := func() kv.ConfigEntry {
		t.Helper()
		select {
		case e := <-got:
			return e
		case <-time.After(10 * time.Second):
			t.Fatal("no revision within 10 s")
		}
		return kv.ConfigEntry{}
	}
	is.Equal(next().Revision, uint64(1)) // the newest at start
	_, err = s.Write(ctx, fleetConfig("/azure/b/"), 1, nil)
	is.NoErr(err)
	e := next()
	is.Equal(e.Config.Pools[0].Routers[0].Path, "/azure/b/")
	is.NoErr(js.DeleteKeyValue(ctx, "c"))
	deadline := time.Now().Add(10 * time.Second)
	for gone.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	is.Equal(gone.Load(), int32(1)) // said once
	_, err = s.Write(ctx, fleetConfig("/azure/c/"), 0, nil)
	is.NoErr(err)
	e = next()
	is.Equal(e.Config.Pools[0].Routers[0].Path, "/azure/c/") // the new bucket followed
	is.Equal(gone.Load(), int32(1))
}
