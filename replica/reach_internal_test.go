package replica

import (
	"net/url"
	"testing"

	"github.com/nats-io/nats.go"
)

// TestAMoveReconnectsToTheServerFoundAnsweringOnceAndThenAsNatsGoChooses:
// the server moveIfAnswered found is chosen whatever its place in the
// pool, by scheme and host (a pool URL may hold credentials), once; a
// later reconnection, or a server since gone from the pool, is nats.go's
// own choice.
func TestAMoveReconnectsToTheServerFoundAnsweringOnceAndThenAsNatsGoChooses(t *testing.T) {
	pool := func() []nats.Server {
		var p []nats.Server
		for _, u := range []string{"nats://127.0.0.1:4222", "nats://alice:secret@127.0.0.1:4223", "nats://127.0.0.1:4224"} {
			parsed, err := url.Parse(u)
			if err != nil {
				t.Fatal(err)
			}
			p = append(p, nats.Server{URL: parsed})
		}
		return p
	}
	var l link
	if got, _ := l.next(pool(), nats.ServerInfo{}); got != nil {
		t.Fatalf("no move asked: next = %v, want nats.go's choice (nil)", got.URL)
	}
	to := "nats://127.0.0.1:4223"
	l.moveTo.Store(&to)
	p := pool()
	got, wait := l.next(p, nats.ServerInfo{})
	if got != &p[1] || wait != 0 {
		t.Fatalf("next = %v after %v, want the pool's own element for %s at once", got, wait, to)
	}
	if again, _ := l.next(pool(), nats.ServerInfo{}); again != nil {
		t.Errorf("a second reconnection went to %v again, want nats.go's choice", again.URL)
	}
	gone := "nats://127.0.0.1:4299"
	l.moveTo.Store(&gone)
	if got, _ := l.next(pool(), nats.ServerInfo{}); got != nil {
		t.Errorf("a server not in the pool: next = %v, want nats.go's choice", got.URL)
	}
}
