package kv

import (
	"cmp"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gecholog/broker/broker"
)

// ConfigChange is one difference between two revisions of the fleet's
// configuration, as `broker config diff` and `history` show it.
type ConfigChange struct {
	// Pool is the ingress of the pool the change is in; "" for a setting
	// of the whole fleet (the policy, the in-flight bound) or the order
	// of the pools.
	Pool string `json:"pool,omitempty"`
	// Router is the router changed, added or removed; "" for none.
	Router string `json:"router,omitempty"`
	// Field is what changed: "pool" or "router" (added or removed),
	// "strategy", "affinity", "weight", "priority", "price", "order", "inflight_bound",
	// "version", or "policy." and the policy's field as the document
	// names it ("policy.disabled_time").
	Field string `json:"field"`
	// From and To are the values before and after; From is "" for what
	// was added, To "" for what was removed.
	From string `json:"from,omitempty"`
	To   string `json:"to,omitempty"`
}

// String is the change on one line: "/azure/: weight /azure/gpt4/ 1→3",
// "/azure/: +/azure/new/", "policy.disabled_time 10m→2m".
func (c ConfigChange) String() string {
	var what string
	switch c.Field {
	case "pool":
		if c.To == "" {
			return "-pool " + c.Pool
		}
		return "+pool " + c.Pool + " (" + c.To + ")"
	case "router":
		switch {
		case c.To == "":
			what = "-" + c.Router
		case c.To == routerText(broker.Router{Weight: 1}):
			what = "+" + c.Router
		default:
			what = "+" + c.Router + " (" + c.To + ")"
		}
	case "order":
		what = "order " + c.From + "→" + c.To
		if c.Pool == "" {
			what = "order of the pools " + c.From + "→" + c.To
		}
	default:
		what = c.Field + " "
		if c.Router != "" {
			what += c.Router + " "
		}
		what += c.From + "→" + c.To
	}
	if c.Pool == "" {
		return what
	}
	return c.Pool + ": " + what
}

// SummarizeChanges says changes on one line, the changes of one pool
// together: "/azure/: weight /azure/gpt4/ 1→3, +/azure/new/;
// policy.disabled_time 10m→2m". None is "no change".
func SummarizeChanges(changes []ConfigChange) string {
	if len(changes) == 0 {
		return "no change"
	}
	var b strings.Builder
	for i, c := range changes {
		s := c.String()
		if i > 0 && c.Pool != "" && c.Pool == changes[i-1].Pool && c.Field != "pool" && changes[i-1].Field != "pool" {
			b.WriteString(", ")
			b.WriteString(strings.TrimPrefix(s, c.Pool+": "))
			continue
		}
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(s)
	}
	return b.String()
}

// DiffConfig lists what b configures differently from a: pools removed
// and added, then each pool's strategy, routers removed and added, their
// weights, priorities and order, then the policy's fields and the
// in-flight bound. Who wrote a revision, when and from what are no
// change. Values that mean the same (an empty strategy and "random",
// "60s" and "1m0s") are equal, so that no change is a document that
// configures the same.
func DiffConfig(a, b FleetConfig) []ConfigChange {
	var out []ConfigChange
	if a.Version != b.Version {
		out = append(out, ConfigChange{Field: "version", From: strconv.Itoa(a.Version), To: strconv.Itoa(b.Version)})
	}
	pool := func(c FleetConfig, ingress string) *ConfigPool {
		for i := range c.Pools {
			if c.Pools[i].Ingress == ingress {
				return &c.Pools[i]
			}
		}
		return nil
	}
	for _, p := range a.Pools {
		if pool(b, p.Ingress) == nil {
			out = append(out, ConfigChange{Pool: p.Ingress, Field: "pool", From: poolText(p)})
		}
	}
	for _, p := range b.Pools {
		if pool(a, p.Ingress) == nil {
			out = append(out, ConfigChange{Pool: p.Ingress, Field: "pool", To: poolText(p)})
		}
	}
	for _, pb := range b.Pools {
		if pa := pool(a, pb.Ingress); pa != nil {
			out = append(out, diffPool(*pa, pb)...)
		}
	}
	if ia, ib := ingresses(a.Pools, b.Pools), ingresses(b.Pools, a.Pools); !slices.Equal(ia, ib) {
		out = append(out, ConfigChange{Field: "order", From: strings.Join(ia, ", "), To: strings.Join(ib, ", ")})
	}
	fa, fb := a.Policy.Fields(), b.Policy.Fields()
	for i := range fa {
		if !sameValue(fa[i].Value, fb[i].Value) {
			out = append(out, ConfigChange{Field: "policy." + fa[i].Name, From: shown(fa[i].Value), To: shown(fb[i].Value)})
		}
	}
	if !sameValue(a.InFlightBound, b.InFlightBound) {
		out = append(out, ConfigChange{Field: "inflight_bound", From: shown(a.InFlightBound), To: shown(b.InFlightBound)})
	}
	return out
}

// PolicyField is one field of the policy as the document names it, its
// value as written.
type PolicyField struct{ Name, Value string }

// Fields are the policy's fields in the document's order.
func (p ConfigPolicy) Fields() []PolicyField {
	v := reflect.ValueOf(p)
	out := make([]PolicyField, v.NumField())
	for i := range out {
		name, _, _ := strings.Cut(v.Type().Field(i).Tag.Get("json"), ",")
		out[i] = PolicyField{Name: name, Value: fmt.Sprint(v.Field(i).Interface())}
	}
	return out
}

// ShownValue is a value of the document as a person writes it: a
// duration without its zero tail (10m, not 10m0s).
func ShownValue(v string) string { return shown(v) }

// diffPool lists what changed in a pool both documents have.
func diffPool(a, b ConfigPool) []ConfigChange {
	var out []ConfigChange
	if sa, sb := strategyName(a), strategyName(b); sa != sb {
		out = append(out, ConfigChange{Pool: b.Ingress, Field: "strategy", From: sa, To: sb})
	}
	if sa, sb := cmp.Or(a.BudgetSpent, broker.BudgetIngress), cmp.Or(b.BudgetSpent, broker.BudgetIngress); sa != sb {
		out = append(out, ConfigChange{Pool: b.Ingress, Field: "budget_spent", From: sa, To: sb})
	}
	if ga, gb := budgetText(a.Budget.BrokerBudget()), budgetText(b.Budget.BrokerBudget()); ga != gb {
		out = append(out, ConfigChange{Pool: b.Ingress, Field: "budget", From: ga, To: gb})
	}
	if aa, ab := affinityText(a.Affinity.BrokerAffinity()), affinityText(b.Affinity.BrokerAffinity()); aa != ab {
		out = append(out, ConfigChange{Pool: b.Ingress, Field: "affinity", From: aa, To: ab})
	}
	router := func(p ConfigPool, path string) *ConfigRouter {
		for i := range p.Routers {
			if p.Routers[i].Path == path {
				return &p.Routers[i]
			}
		}
		return nil
	}
	for _, r := range a.Routers {
		if router(b, r.Path) == nil {
			out = append(out, ConfigChange{Pool: b.Ingress, Router: r.Path, Field: "router", From: routerText(r.BrokerRouter())})
		}
	}
	for _, r := range b.Routers {
		ra := router(a, r.Path)
		if ra == nil {
			out = append(out, ConfigChange{Pool: b.Ingress, Router: r.Path, Field: "router", To: routerText(r.BrokerRouter())})
			continue
		}
		if ra.Weight != r.Weight {
			out = append(out, ConfigChange{Pool: b.Ingress, Router: r.Path, Field: "weight", From: strconv.Itoa(ra.Weight), To: strconv.Itoa(r.Weight)})
		}
		if ra.Priority != r.Priority {
			out = append(out, ConfigChange{Pool: b.Ingress, Router: r.Path, Field: "priority", From: strconv.Itoa(ra.Priority), To: strconv.Itoa(r.Priority)})
		}
		if pa, pb := priceText(ra.Price.BrokerPrice()), priceText(r.Price.BrokerPrice()); pa != pb {
			out = append(out, ConfigChange{Pool: b.Ingress, Router: r.Path, Field: "price", From: pa, To: pb})
		}
		if ga, gb := budgetText(ra.Budget.BrokerBudget()), budgetText(r.Budget.BrokerBudget()); ga != gb {
			out = append(out, ConfigChange{Pool: b.Ingress, Router: r.Path, Field: "budget", From: ga, To: gb})
		}
	}
	pa, pb := paths(a.Routers, b.Routers), paths(b.Routers, a.Routers)
	if !slices.Equal(pa, pb) {
		out = append(out, ConfigChange{Pool: b.Ingress, Field: "order", From: strings.Join(pa, ", "), To: strings.Join(pb, ", ")})
	}
	return out
}

// ingresses are the ingresses of pools that others has too, in order.
func ingresses(pools, others []ConfigPool) []string {
	var out []string
	for _, p := range pools {
		if slices.ContainsFunc(others, func(o ConfigPool) bool { return o.Ingress == p.Ingress }) {
			out = append(out, p.Ingress)
		}
	}
	return out
}

// paths are the paths of routers that others has too, in order.
func paths(routers, others []ConfigRouter) []string {
	var out []string
	for _, r := range routers {
		if slices.ContainsFunc(others, func(o ConfigRouter) bool { return o.Path == r.Path }) {
			out = append(out, r.Path)
		}
	}
	return out
}

func routerText(r broker.Router) string {
	s := "weight " + strconv.Itoa(r.Weight)
	if r.Priority != 0 {
		s += ", priority " + strconv.Itoa(r.Priority)
	}
	if r.Price != nil {
		s += ", price " + priceText(r.Price)
	}
	if r.Budget != nil {
		s += ", budget " + budgetText(r.Budget)
	}
	return s
}

// priceText is a price on one line, per million tokens: "input 2.5
// output 10 cached_input 1.25"; "none" for nil.
func priceText(p *broker.Price) string {
	if p == nil {
		return "none"
	}
	f := func(x float64) string { return strconv.FormatFloat(x, 'g', -1, 64) }
	return "input " + f(p.Input) + " output " + f(p.Output) + " cached_input " + f(p.CachedInput)
}

// strategyName is the strategy p's calls without a session key go by,
// the default when it names none (broker.Pool.StrategyName).
func strategyName(p ConfigPool) string {
	return broker.Pool{Strategy: p.Strategy, Affinity: p.Affinity.BrokerAffinity()}.StrategyName()
}

func poolText(p ConfigPool) string {
	var routers []string
	for _, r := range p.Routers {
		routers = append(routers, r.Path)
	}
	s := strategyName(p) + " over " + strings.Join(routers, ", ")
	if a := p.Affinity.BrokerAffinity(); a.On() {
		s += ", affinity " + affinityText(a)
	}
	return s
}

// sameValue reports whether two values of a field mean the same: equal,
// or equal durations.
func sameValue(a, b string) bool {
	if a == b {
		return true
	}
	da, errA := time.ParseDuration(a)
	db, errB := time.ParseDuration(b)
	return errA == nil && errB == nil && da == db
}

// shown is a value as a person writes it: a duration without its zero
// tail (10m, not 10m0s; 1h, not 1h0m0s).
func shown(v string) string {
	d, err := time.ParseDuration(v)
	if err != nil || v == "0" {
		return v
	}
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
