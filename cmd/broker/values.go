package main

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/kv"
	"github.com/gecholog/broker/ops"
)

// The settings whose values need more than a number, a string or a Go
// duration: the pools file, DISABLED_TIME in minutes, the all-disabled
// mode and --for.

// maxPoolsFile bounds what the broker reads: a pools file is a few
// kilobytes even with a thousand routers.
const maxPoolsFile = 1 << 20

// readPools reads a pools file:
//
//	{"pools": [{"ingress": "/azure/", "strategy": "least-busy",
//	            "routers": [{"path": "/azure/ptu/", "weight": 2, "priority": 0,
//	                         "price": {"input": 2.5, "output": 10, "cached_input": 1.25}}, ...]}]}
//
// A weight of 0 or an absent weight means 1; an absent priority is 0, the
// first tier; an absent strategy is random; a price, per million tokens,
// needs input and output, and an absent cached_input is input. A router
// may give a "budget" (kv.ConfigBudget) and a pool "budget_spent". A pool
// may keep conversations on one router with "affinity": "session" or
// {"header": "X-Conversation-Id"} (see kv.ConfigAffinity). Unknown
// fields are refused, and the pools are validated.
func readPools(path string) ([]broker.Pool, error) {
	data, err := readPoolsFile(path)
	if err != nil {
		return nil, err
	}
	return decodePools(data)
}

// readPoolsFile reads a pools file, at most maxPoolsFile bytes of it.
func readPoolsFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxPoolsFile+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxPoolsFile {
		return nil, fmt.Errorf("larger than %d bytes; is it the right file?", maxPoolsFile)
	}
	return data, nil
}

// decodePools reads the pools of a pools file, as readPools describes.
func decodePools(data []byte) ([]broker.Pool, error) {
	var file struct {
		Pools []struct {
			Ingress     string             `json:"ingress"`
			Strategy    string             `json:"strategy"`
			Affinity    *kv.ConfigAffinity `json:"affinity"`
			BudgetSpent string             `json:"budget_spent"`
			Budget      *kv.ConfigBudget   `json:"budget"`
			Routers     []struct {
				Path     string `json:"path"`
				Weight   int    `json:"weight"`
				Priority int    `json:"priority"`
				Price    *struct {
					Input       *float64 `json:"input"`
					Output      *float64 `json:"output"`
					CachedInput *float64 `json:"cached_input"`
				} `json:"price"`
				Budget *kv.ConfigBudget `json:"budget"`
			} `json:"routers"`
		} `json:"pools"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&file); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			// Say the field and the JSON wanted, never Go's type names.
			field, want := cmp.Or(te.Field, "the file"), "an object {\"pools\": [...]}"
			switch te.Type.Kind() {
			case reflect.Slice:
				want = "an array"
			case reflect.Int, reflect.Int64:
				want = "a whole number"
			case reflect.Float64:
				want = "a number"
			case reflect.String:
				want = "a string"
			case reflect.Struct:
				if te.Field != "" {
					want = "an object"
				}
			}
			return nil, fmt.Errorf("decode pools: %s: got a JSON %s, want %s", field, te.Value, want)
		}
		return nil, fmt.Errorf("decode pools: %w", err)
	}
	if dec.More() {
		return nil, errors.New("decode pools: trailing data after the JSON object")
	}
	pools := []broker.Pool{}
	for _, p := range file.Pools {
		pool := broker.Pool{Ingress: p.Ingress, Strategy: p.Strategy, Affinity: p.Affinity.BrokerAffinity(), BudgetSpent: p.BudgetSpent, Budget: p.Budget.BrokerBudget()}
		for _, r := range p.Routers {
			br := broker.Router{Path: r.Path, Weight: cmp.Or(r.Weight, 1), Priority: r.Priority, Budget: r.Budget.BrokerBudget()}
			if pr := r.Price; pr != nil {
				switch {
				case pr.Input == nil:
					return nil, fmt.Errorf("pool %q: router %q: price.input: missing; give the price per million input tokens", p.Ingress, r.Path)
				case pr.Output == nil:
					return nil, fmt.Errorf("pool %q: router %q: price.output: missing; give the price per million output tokens", p.Ingress, r.Path)
				}
				br.Price = &broker.Price{Input: *pr.Input, Output: *pr.Output, CachedInput: *cmp.Or(pr.CachedInput, pr.Input)}
			}
			pool.Routers = append(pool.Routers, br)
		}
		pools = append(pools, pool)
	}
	if err := broker.ValidatePools(pools); err != nil {
		return nil, err
	}
	return pools, nil
}

// maxMinutes is a year: longer is surely a typo, and far longer would
// overflow time.Duration.
const maxMinutes = 365 * 24 * 60

// disabledTime is DISABLED_TIME: minutes, fractions allowed, as the
// original broker read it; 0, as there, means a failure never takes a
// router out.
type disabledTime broker.Policy

func (v *disabledTime) Set(s string) error {
	m, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || math.IsNaN(m) || m < 0 || m > maxMinutes {
		return fmt.Errorf("not a number of minutes from 0 to %d (fractions allowed, e.g. 0.5; 0: failures never take a router out)", maxMinutes)
	}
	// A fraction of a second is kept exact: the record's until is the
	// truth, and a JetStream TTL is rounded up to a whole second.
	d := time.Duration(m * float64(time.Minute))
	if m > 0 && d < broker.MinDisabledTime {
		// 1e-12 would round to 0, which turns disabling off, and
		// 0.0000001 to 6 µs: neither is what was meant.
		return fmt.Errorf("%s minutes is %v, shorter than the shortest disable, %s minutes (%v); 0 turns disabling off",
			strings.TrimSpace(s), d, strconv.FormatFloat(broker.MinDisabledTime.Minutes(), 'f', -1, 64), broker.MinDisabledTime)
	}
	v.NeverDisable = m == 0
	if m > 0 {
		v.DisabledTime = d
	}
	return nil
}

func (v *disabledTime) String() string {
	if v == nil || v.NeverDisable {
		return "0"
	}
	return strconv.FormatFloat(v.DisabledTime.Minutes(), 'f', -1, 64)
}

// allDisabled is the all-disabled mode, checked by the broker's own rule.
type allDisabled broker.AllDisabled

func (v *allDisabled) Set(s string) error {
	m, err := broker.ParseAllDisabled(s)
	if err != nil {
		return errors.New("panic, ingress or any")
	}
	*v = allDisabled(m)
	return nil
}

func (v *allDisabled) String() string {
	if v == nil {
		return ""
	}
	return string(*v)
}

// forTime is --for: a Go duration from a second to a year.
type forTime time.Duration

func (v *forTime) Set(s string) error {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	switch {
	case err != nil:
		return errors.New("not a duration such as 90s, 30m, 2h or 1h30m")
	case d < time.Second:
		return errors.New("must be at least 1s; leave --for out to disable until enabled by hand")
	case d > ops.MaxFor:
		return errors.New("more than a year; leave --for out to disable until enabled by hand")
	}
	*v = forTime(d)
	return nil
}

func (v *forTime) String() string {
	if v == nil || *v == 0 {
		return ""
	}
	return time.Duration(*v).String()
}

// failureCodes is BROKER_FAILURE_CODES, read by the broker's own rule.
type failureCodes broker.FailureCodes

func (v *failureCodes) Set(s string) error {
	c, err := broker.ParseFailureCodes(s)
	if err != nil {
		return err
	}
	*v = failureCodes(c)
	return nil
}

// String is "" for the zero value, which the flag package takes for "no
// default": broker.FailureCodes says its zero value as the default codes,
// and -h would then leave out the default it registered.
func (v *failureCodes) String() string {
	if v == nil || *v == (failureCodes{}) {
		return ""
	}
	return broker.FailureCodes(*v).String()
}
