package kv

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/gecholog/broker/broker"
)

// RecordVersion is the version of the record format this package writes.
const RecordVersion = 1

// record is the JSON form of a broker.Record, the documented record format
// a person reads with `nats kv get`:
//
//	{"v":1,"router":"/azure/dud/","status":502,"reason":"egress_status_code 502",
//	 "at":"2026-11-25T12:00:00Z","until":"2026-11-25T12:10:00Z","by":"broker-7f9c:1"}
//
// An operator's disable adds "manual":true and may leave out "until". The
// memo in a delete marker is the same format with "ended" and "failures".
// The field order is the order written: add fields, never rename them.
type record struct {
	Version  int       `json:"v"`
	Router   string    `json:"router"`
	Status   int       `json:"status,omitempty"`
	Reason   string    `json:"reason"`
	At       time.Time `json:"at"`
	Until    time.Time `json:"until,omitzero"`
	By       string    `json:"by"`
	Manual   bool      `json:"manual,omitempty"`
	Level    int       `json:"level,omitempty"`
	Probe    *probe    `json:"probe,omitempty"`
	Failures int       `json:"failures,omitempty"`
	Ended    time.Time `json:"ended,omitzero"`
}

type probe struct {
	By    string    `json:"by"`
	At    time.Time `json:"at"`
	Until time.Time `json:"until"`
}

// Encode returns r's JSON form. It fails only for a time outside the years
// 0 to 9999.
func Encode(r broker.Record) ([]byte, error) {
	w := record{Version: RecordVersion, Router: r.Router, Status: r.Status, Reason: r.Reason, At: r.At,
		Until: r.Until, By: r.By, Manual: r.Manual, Level: r.Level, Failures: r.Failures, Ended: r.Ended}
	if r.Probe != nil {
		w.Probe = &probe{By: r.Probe.By, At: r.Probe.At, Until: r.Probe.Until}
	}
	b, err := json.Marshal(w)
	if err != nil {
		return nil, fmt.Errorf("encode record %q: %w", r.Router, err)
	}
	return b, nil
}

// Decode parses a stored value for key. The key wins over the record's own
// router field, so a record copied under the wrong key cannot disable a
// router nobody named.
func Decode(key string, value []byte) (broker.Record, error) {
	var w record
	if err := json.Unmarshal(value, &w); err != nil {
		return broker.Record{}, fmt.Errorf("record %q is not valid JSON: %w", key, err)
	}
	if w.Version != RecordVersion {
		return broker.Record{}, fmt.Errorf("record %q has version %d, this broker reads version %d", key, w.Version, RecordVersion)
	}
	r := broker.Record{Router: key, Status: w.Status, Reason: w.Reason, At: w.At, Until: w.Until, By: w.By,
		Manual: w.Manual, Level: w.Level, Failures: w.Failures, Ended: w.Ended}
	if w.Probe != nil {
		r.Probe = &broker.Probe{By: w.Probe.By, At: w.Probe.At, Until: w.Probe.Until}
	}
	return r, nil
}
