package kv

import (
	"encoding/json"
	"fmt"
	"time"
)

// RecordVersion is the version of the record format this package writes.
const RecordVersion = 1

// Record is the value stored under a disabled router's key. Its JSON form is
// the documented record format:
//
//	{"v":1,"router":"/azure/dud/","status":502,"reason":"egress status 502",
//	 "at":"2026-11-25T12:00:00Z","until":"2026-11-25T12:10:00Z","by":"broker-7f9c:1"}
//
// An operator's disable adds "manual":true and may leave out "until".
//
// When a router is enabled again its key is deleted, and the delete marker
// carries a memo: the same format with "ended" and "failures", from which
// the backoff level and the failure count survive restarts while `nats kv
// ls` lists only disabled routers.
type Record struct {
	Version int    `json:"v"`
	Router  string `json:"router"`
	// Status is the status code that caused the disable, 0 when none did.
	Status int    `json:"status,omitempty"`
	Reason string `json:"reason"`
	// At is when the router was disabled.
	At time.Time `json:"at"`
	// Until is when the router comes back. It is the truth; a TTL on the key
	// is only clean-up. The zero time means until someone deletes the key.
	Until time.Time `json:"until,omitzero"`
	// By names the replica (or person) that wrote the record.
	By string `json:"by"`
	// Manual marks a disable set by an operator: automatic logic never
	// lifts it early, overwrites it or probes the router.
	Manual bool `json:"manual,omitempty"`
	// Level is the backoff level of an automatic disable: it lasted the
	// disabled time times the multiplier to this power.
	Level int `json:"level,omitempty"`
	// Probe is the claim on the one trial call a router on probation gets
	// after Until, held by one replica until the claim's Until.
	Probe *Probe `json:"probe,omitempty"`
	// Failures counts consecutive failures not yet enough to disable.
	// Kept in a memo, not in a live record.
	Failures int `json:"failures,omitempty"`
	// Ended is when a disable stopped disabling (a probe succeeded, or it
	// lapsed). Kept in a memo, from which the backoff level decays.
	Ended time.Time `json:"ended,omitzero"`
}

// Probe is a replica's claim on a router's half-open trial call.
type Probe struct {
	By    string    `json:"by"`
	At    time.Time `json:"at"`
	Until time.Time `json:"until"`
}

// ActiveAt reports whether the record still disables its router at t.
func (r Record) ActiveAt(t time.Time) bool {
	return r.Until.IsZero() || t.Before(r.Until)
}

// Encode returns the record's JSON form, with Version set. It fails only for
// a time outside the years 0 to 9999.
func (r Record) Encode() ([]byte, error) {
	r.Version = RecordVersion
	b, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("encode record %q: %w", r.Router, err)
	}
	return b, nil
}

// Decode parses a stored value for key. The key wins over the record's own
// router field, so a record copied under the wrong key cannot disable a
// router nobody named.
func Decode(key string, value []byte) (Record, error) {
	var r Record
	if err := json.Unmarshal(value, &r); err != nil {
		return Record{}, fmt.Errorf("record %q is not valid JSON: %w", key, err)
	}
	if r.Version != RecordVersion {
		return Record{}, fmt.Errorf("record %q has version %d, this broker reads version %d", key, r.Version, RecordVersion)
	}
	r.Router = key
	return r, nil
}
