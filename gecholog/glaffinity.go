package gecholog

import (
	"cmp"
	"fmt"
	"strings"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/safetext"
)

// affinity advises when pools keep a conversation on one router and the
// file keeps the conversation's key from the broker. gecholog gives a
// request processor the client's headers only in ingress_headers, and
// only when its input_fields_include names that field; and a session is
// the header gecholog's session_id_header names. Either way every call
// of those pools has no key and goes by the pool's strategy: the broker
// still routes and fails over, so it is advice.
func (c *checker) affinity(top map[string]any, request []processor, pools []broker.Pool, header string) {
	var keyed, sessions []string
	for _, p := range pools {
		switch a := p.Affinity; {
		case a.Session:
			keyed = append(keyed, p.Ingress+" (session)")
			sessions = append(sessions, p.Ingress)
		case a.Header != "":
			keyed = append(keyed, p.Ingress+" (header "+a.Header+")")
		}
	}
	if len(keyed) == 0 {
		return
	}
	for _, p := range request {
		c.needsInput(c.advise, p, "ingress_headers", "pools "+strings.Join(keyed, ", ")+
			" keep a conversation on one router by a client header, which gecholog sends the broker only in ingress_headers; without it no call has a key and each goes by the pool's strategy"+
			" (the broker reads only the header the pool names, and never logs, keeps or publishes the others, the API key among them)")
	}
	if len(sessions) == 0 {
		return
	}
	header = cmp.Or(header, DefaultSessionHeader)
	const field = "session_id_header"
	until := fmt.Sprintf("until then the calls of pools %s have no session key and go by the pool's strategy", strings.Join(sessions, ", "))
	v, ok := top[field]
	got, isString := v.(string)
	switch {
	case !ok:
		c.advise(field, "missing: set it to %q, the header the broker reads gecholog's session id from (gecholog's seed sets Session-Id); %s", header, until)
	case !isString:
		c.advise(field, "%s, not a string: set it to %q, the header the broker reads gecholog's session id from; %s", kind(v), header, until)
	case strings.Contains(got, "${"):
		// gecholog fills the placeholder in; only the result can be checked.
	case strings.EqualFold(got, header):
		// Header names match in any case, in gecholog and in the broker.
	case CheckSessionHeader(got) != nil:
		c.advise(field, "%q is not a header name: %v; %s", safetext.Clip(got, MaxSessionHeader), CheckSessionHeader(got), until)
	default:
		c.advise(field, "%q, but the broker reads gecholog's session id from header %q: run the broker with BROKER_SESSION_HEADER=%s (-session-header), or set session_id_header to %q; %s", got, header, got, header, until)
	}
}
