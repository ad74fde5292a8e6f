package replica

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The budgets' metrics (broker.Budgets), read at scrape time. The labels
// are the pools' router paths and the four caps' names: a bounded set.
var (
	budgetLimitDesc = prometheus.NewDesc("broker_budget_limit",
		"A router's budget cap, by cap: tokens_per_minute and requests_per_minute in tokens and requests, spend_per_day and spend_per_month in the currency of the router's price.",
		[]string{"router", "budget"}, nil)
	budgetUsedDesc = prometheus.NewDesc("broker_budget_used",
		"What the router used in the cap's current period, as gecholog's transaction log told this replica (every replica hears every call, so they agree).",
		[]string{"router", "budget"}, nil)
	budgetResetDesc = prometheus.NewDesc("broker_budget_reset_timestamp_seconds",
		"When the cap's current period ends and its count starts again, in Unix seconds: the next minute, or midnight and the first of the month in the budget's time zone.",
		[]string{"router", "budget"}, nil)
	budgetOutDesc = prometheus.NewDesc("broker_budget_out",
		"1 while the router is out of its pools because its budget is spent (its counts and its calls in flight reach a cap), else 0. Not a failure: it comes back when the period resets.",
		[]string{"router"}, nil)
)

// budgetCollector turns the budgets into metrics when scraped.
type budgetCollector struct{ m *monitor }

func (c budgetCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- budgetLimitDesc
	ch <- budgetUsedDesc
	ch <- budgetResetDesc
	ch <- budgetOutDesc
}

func (c budgetCollector) Collect(ch chan<- prometheus.Metric) {
	b := c.m.broker.Load()
	if b == nil {
		return // still connecting
	}
	out := map[string]bool{}
	for _, s := range b.Budgets(time.Now()) {
		k := s.Kind.String()
		ch <- prometheus.MustNewConstMetric(budgetLimitDesc, prometheus.GaugeValue, s.Limit, s.Router, k)
		ch <- prometheus.MustNewConstMetric(budgetUsedDesc, prometheus.GaugeValue, s.Used, s.Router, k)
		ch <- prometheus.MustNewConstMetric(budgetResetDesc, prometheus.GaugeValue, float64(s.Resets.UnixMilli())/1000, s.Router, k)
		if _, seen := out[s.Router]; !seen {
			out[s.Router] = s.Out
			v := 0.0
			if s.Out {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(budgetOutDesc, prometheus.GaugeValue, v, s.Router)
		}
	}
}
