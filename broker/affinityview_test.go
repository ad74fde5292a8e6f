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
