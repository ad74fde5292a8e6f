package kv

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/gecholog/broker/broker"
)

// ConfigAffinity is a pool's session affinity as the pools file and the
// document write it: the string "session" (gecholog's session, from its
// session header), or an object {"header": "X-Conversation-Id"} or
// {"session": true}, either with an optional "load_factor"; "session"
// also with an optional "ttl" (how long a session is remembered after its
// last call, a duration such as "10m") and "stay" (a session that moved
// keeps its new router). The pools
// file and the document read it alike, strictly: an unknown field or
// another string is refused.
type ConfigAffinity struct {
	Session    bool    `json:"session,omitempty"`
	Header     string  `json:"header,omitempty"`
	LoadFactor float64 `json:"load_factor,omitempty"`
	TTL        string  `json:"ttl,omitempty"`
	Stay       bool    `json:"stay,omitempty"`
}

// affinityHint is what an error about an affinity says to write.
const affinityHint = `give "affinity": "session" or {"header": "X-Conversation-Id"}, optionally with "load_factor", and for "session" "ttl" (such as "10m") and "stay": true`

// UnmarshalJSON reads either form.
func (a *ConfigAffinity) UnmarshalJSON(data []byte) error {
	data = bytes.TrimSpace(data)
	if len(data) > 0 && data[0] == '"' {
		var s string
		if err := json.Unmarshal(data, &s); err != nil {
			return fmt.Errorf("affinity: %v", err)
		}
		if s != "session" {
			return fmt.Errorf("affinity %s: %s", strconv.Quote(clip(s)), affinityHint)
		}
		*a = ConfigAffinity{Session: true}
		return nil
	}
	type plain ConfigAffinity // without this method
	var p plain
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return fmt.Errorf("affinity: %v; %s", err, affinityHint)
	}
	if !p.Session && p.Header == "" {
		return errors.New("affinity: neither \"session\" nor a header; " + affinityHint)
	}
	if p.TTL != "" {
		if _, err := time.ParseDuration(p.TTL); err != nil {
			return fmt.Errorf(`affinity: ttl %s: not a duration; give one such as "10m" or "90s"`, strconv.Quote(clip(p.TTL)))
		}
	}
	*a = ConfigAffinity(p)
	return nil
}

// MarshalJSON writes "session" when that says it all, else the object.
func (a ConfigAffinity) MarshalJSON() ([]byte, error) {
	if a == (ConfigAffinity{Session: true}) {
		return []byte(`"session"`), nil
	}
	type plain ConfigAffinity
	return json.Marshal(plain(a))
}

// NewConfigAffinity is a as the document writes it; nil for none.
func NewConfigAffinity(a broker.Affinity) *ConfigAffinity {
	if !a.On() && a.LoadFactor == 0 {
		return nil
	}
	c := &ConfigAffinity{Session: a.Session, Header: a.Header, LoadFactor: a.LoadFactor, Stay: a.Stay}
	if a.TTL != 0 {
		c.TTL = a.TTL.String()
	}
	return c
}

// BrokerAffinity is the affinity a says; none for nil.
func (a *ConfigAffinity) BrokerAffinity() broker.Affinity {
	if a == nil {
		return broker.Affinity{}
	}
	b := broker.Affinity{Session: a.Session, Header: a.Header, LoadFactor: a.LoadFactor, Stay: a.Stay}
	if a.TTL != "" {
		d, err := time.ParseDuration(a.TTL)
		if err != nil {
			d = -1 // refused by broker.ValidatePools; UnmarshalJSON says why
		}
		b.TTL = d
	}
	return b
}

// affinityText is a on one line: "none", "session", "header
// X-Conversation-Id", with ", load factor 2" when given.
func affinityText(a broker.Affinity) string {
	s := "none"
	switch {
	case a.Session:
		s = "session"
	case a.Header != "":
		s = "header " + a.Header
	}
	if a.LoadFactor != 0 {
		s += ", load factor " + strconv.FormatFloat(a.LoadFactor, 'g', -1, 64)
	}
	if a.TTL != 0 {
		s += ", ttl " + a.TTL.String()
	}
	if a.Stay {
		s += ", sessions stay"
	}
	return s
}
