package gecholog

// KeyProblemsCounted are the problems KeyProblems counts, in its order
// of indexes: every KeyProblem but KeyOK.
var KeyProblemsCounted = []KeyProblem{KeyEmpty, KeyLong, KeyMalformed}

// String names p as broker_session_key_problems_total's problem label
// does: "ok", "empty", "too_long" or "malformed".
func (p KeyProblem) String() string {
	switch p {
	case KeyOK:
		return "ok"
	case KeyEmpty:
		return "empty"
	case KeyLong:
		return "too_long"
	case KeyMalformed:
		return "malformed"
	}
	return "unknown"
}

// SessionHeaderName is the header the pools with "affinity": "session"
// key their calls by (the SessionHeader option; DefaultSessionHeader
// without it): a name only, which status and explain show.
func (h *Handler) SessionHeaderName() string { return h.session }
