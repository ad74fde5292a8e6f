package natstest

import "github.com/nats-io/nats-server/v2/server"

// AnswersDirectGets reports whether s's own copy of stream answers direct
// gets, rather than passing them to another server's over a route. A
// follower joins the direct gets' queue group only once it has caught up,
// checked every 2 s after it learns its leader, and keeps answering when
// it loses its peers; a test that cuts a node off and reads its copy
// waits for this first.
func AnswersDirectGets(s *server.Server, stream string) bool {
	subject := "$JS.API.DIRECT.GET." + stream
	sz, err := s.Subsz(&server.SubszOptions{Subscriptions: true, Limit: 1 << 12, Test: subject})
	if err != nil {
		return false
	}
	rz, err := s.Routez(nil)
	if err != nil {
		return false
	}
	routes := map[uint64]bool{}
	for _, r := range rz.Routes {
		routes[r.Rid] = true
	}
	for _, d := range sz.Subs {
		if d.Subject == subject && d.Queue != "" && !routes[d.Cid] {
			return true
		}
	}
	return false
}
