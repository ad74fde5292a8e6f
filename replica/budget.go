package replica

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The budgets' metrics (broker.Budgets), read at scrape time. The labels
// are the pools' router paths or ingresses and the four caps' names: a
// bounded set. A pool's own budget has metrics of its own, labelled by
// ingress as broker_choices_total labels a pool, so that a router's
// series never mix with a pool's.
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

	poolBudgetLimitDesc = prometheus.NewDesc("broker_pool_budget_limit",
		"A pool's own budget cap, on the calls through its ingress, by cap: as broker_budget_limit.",
		[]string{"ingress", "budget"}, nil)
	poolBudgetUsedDesc = prometheus.NewDesc("broker_pool_budget_used",
		"What the calls through the pool's ingress (request.original_gl_path) used in the cap's current period, each at its router's price, as gecholog's transaction log told this replica.",
		[]string{"ingress", "budget"}, nil)
	poolBudgetResetDesc = prometheus.NewDesc("broker_pool_budget_reset_timestamp_seconds",
		"When the pool's cap's current period ends and its count starts again, in Unix seconds.",
		[]string{"ingress", "budget"}, nil)
	poolBudgetOutDesc = prometheus.NewDesc("broker_pool_budget_out",
		"1 while the pool is out because its own budget is spent: its calls stay on the ingress router's own outbound until the period resets; else 0.",
		[]string{"ingress"}, nil)
)

// budgetCollector turns the budgets into metrics when scraped.
type budgetCollector struct{ m *monitor }

func (c budgetCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- budgetLimitDesc
	ch <- budgetUsedDesc
	ch <- budgetResetDesc
	ch <- budgetOutDesc
	ch <- poolBudgetLimitDesc
	ch <- poolBudgetUsedDesc
	ch <- poolBudgetResetDesc
	ch <- poolBudgetOutDesc
}

func (c budgetCollector) Collect(ch chan<- prometheus.Metric) {
	b := c.m.broker.Load()
	if b == nil {
		return // still connecting
	}
	out := map[string]bool{}
	for _, s := range b.Budgets(time.Now()) {
		limit, used, reset, outDesc, who := budgetLimitDesc, budgetUsedDesc, budgetResetDesc, budgetOutDesc, s.Router
		if s.Router == "" {
			limit, used, reset, outDesc, who = poolBudgetLimitDesc, poolBudgetUsedDesc, poolBudgetResetDesc, poolBudgetOutDesc, s.Pool
		}
		k := s.Kind.String()
		ch <- prometheus.MustNewConstMetric(limit, prometheus.GaugeValue, s.Limit, who, k)
		ch <- prometheus.MustNewConstMetric(used, prometheus.GaugeValue, s.Used, who, k)
		ch <- prometheus.MustNewConstMetric(reset, prometheus.GaugeValue, float64(s.Resets.UnixMilli())/1000, who, k)
		if _, seen := out[s.Router+" "+s.Pool]; !seen {
			out[s.Router+" "+s.Pool] = s.Out
			v := 0.0
			if s.Out {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(outDesc, prometheus.GaugeValue, v, who)
		}
	}
}
