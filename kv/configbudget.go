package kv

import (
	"strconv"
	"strings"

	"github.com/gecholog/broker/broker"
)

// ConfigBudget is a router's budget as the pools file and the document
// write it (broker.Budget): each cap left out caps nothing.
type ConfigBudget struct {
	TokensPerMinute   int64   `json:"tokens_per_minute,omitempty"`
	RequestsPerMinute int64   `json:"requests_per_minute,omitempty"`
	SpendPerDay       float64 `json:"spend_per_day,omitempty"`
	SpendPerMonth     float64 `json:"spend_per_month,omitempty"`
	TimeZone          string  `json:"time_zone,omitempty"`
}

// NewConfigBudget is g as the document writes it; nil for nil.
func NewConfigBudget(g *broker.Budget) *ConfigBudget {
	if g == nil {
		return nil
	}
	c := ConfigBudget(*g)
	return &c
}

// BrokerBudget is the budget c says; nil for nil.
func (c *ConfigBudget) BrokerBudget() *broker.Budget {
	if c == nil {
		return nil
	}
	g := broker.Budget(*c)
	return &g
}

// budgetText is a budget on one line, "tokens_per_minute 100000,
// spend_per_day 50 (Europe/Stockholm)"; "none" for nil.
func budgetText(g *broker.Budget) string {
	if g == nil {
		return "none"
	}
	var parts []string
	for _, f := range []struct {
		name string
		v    float64
	}{{"tokens_per_minute", float64(g.TokensPerMinute)}, {"requests_per_minute", float64(g.RequestsPerMinute)},
		{"spend_per_day", g.SpendPerDay}, {"spend_per_month", g.SpendPerMonth}} {
		if f.v != 0 {
			parts = append(parts, f.name+" "+strconv.FormatFloat(f.v, 'g', -1, 64))
		}
	}
	s := strings.Join(parts, ", ")
	if g.TimeZone != "" {
		s += " (" + g.TimeZone + ")"
	}
	return s
}
