package broker_test

import (
	"testing"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
)

func TestSessionRouterSaysWhereASessionGoesWithoutChoosing(t *testing.T) {
	is := is.New(t)
	p := sessionPool([]int{1, 2, 3, 1})
	b, _ := newBroker(t, broker.Config{Pools: []broker.Pool{p, {Ingress: "/plain/", Routers: []broker.Router{{Path: "/plain/a/", Weight: 1}}}}})
	for i := range 500 {
		k := sessionKey(i)
		r, spilled, ok := b.SessionRouter("/s/", k)
		is.True(ok)
		is.True(!spilled)
		is.Equal(r, settled(b, "/s/", k)) // where the session's call then goes
	}
	is.Equal(b.Sessions(), broker.SessionCounts{Keyed: 500}) // only the calls are counted
	disable(b, "/s/r2/", 1)
	for i := range 500 {
		k := sessionKey(i)
		r, _, _ := b.SessionRouter("/s/", k)
		is.True(r != "/s/r2/")            // never a router that is out
		is.Equal(r, settled(b, "/s/", k)) // the same as the call
	}
	for _, c := range []struct {
		ingress string
		key     []byte
	}{
		{"/plain/", sessionKey(1)},                    // a pool without affinity
		{"/nope/", sessionKey(1)},                     // no pool
		{"/s/", nil},                                  // no key
		{"/s/", make([]byte, broker.MaxSessionKey+1)}, // too long: no session
	} {
		_, _, ok := b.SessionRouter(c.ingress, c.key)
		is.True(!ok) // no session's router
	}
}

func TestSessionWaySaysWhenARememberedSessionGoesBackToItsRouter(t *testing.T) {
	for _, stay := range []bool{false, true} {
		is := is.New(t)
		p := sessionPool([]int{1, 1, 1, 1})
		p.Affinity.Stay = stay
		b, _ := newBroker(t, broker.Config{Pools: []broker.Pool{p}})
		k := sessionKey(11)
		is.Equal(b.SessionWay("/s/", k), broker.SessionWay{Router: settled(b, "/s/", k)}) // not remembered: by its order
		there := notFirst(t, p, k)
		heard(b, k, there)
		w := b.SessionWay("/s/", k)
		is.Equal(w, broker.SessionWay{Router: there, Home: there, Remembered: true}) // stay=%v: remembered there, not its order's first
		is.Equal(settled(b, "/s/", k), there)                                        // and the call goes there too
		disable(b, there, 1)
		w = b.SessionWay("/s/", k)
		is.Equal(w.Home, there)                  // still remembered
		is.True(!w.Remembered && w.Router != "") // but out: the order answers
		is.Equal(w.Router, settled(b, "/s/", k)) // as the call does
	}
}
