package main

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/standin"
)

// views measures how long the replicas' views of a router take to agree
// after a change, as the strategies read them: a call chosen and a call
// reported (its calls in flight, which the replicas tell each other), and
// a finished call on gecholog's transaction log (its latency and headroom,
// which one replica reads and tells the others as a digest). Each change is made alone, and the
// time runs from sending it to the last replica showing it.
func (b *bench) views(ctx context.Context) error {
	o := b.o
	p := pool("views", "least-busy", "a", "b", "c")
	l, err := b.startLab(ctx, []broker.Pool{p}, instant(p), 0)
	if err != nil {
		return err
	}
	defer l.close()
	fmt.Fprintf(b.out, "%d replicas, pool %s (least-busy). %d trials, each: a request context, its response context, and a transaction\n"+
		"on the logger subject, one at a time; each timed from sending it until every replica's view shows it.\n\n", o.replicas, p.Ingress, o.trials)

	view := func(i int, router string) broker.RouterView {
		for _, v := range l.f.Replicas[i].Broker().View(time.Now()) {
			if v.Router == router {
				return v
			}
		}
		return broker.RouterView{}
	}
	// every waits until cond holds for router on every replica, and says
	// how long that took from start; false when not within 5 s.
	every := func(start time.Time, router string, cond func(broker.RouterView) bool) (time.Duration, bool) {
		for deadline := start.Add(5 * time.Second); ; time.Sleep(50 * time.Microsecond) {
			all := true
			for i := range l.f.Replicas {
				all = all && cond(view(i, router))
			}
			switch {
			case all:
				return time.Since(start), true
			case time.Now().After(deadline) || ctx.Err() != nil:
				return 0, false
			}
		}
	}
	request := func(body string) ([]byte, error) {
		m, err := l.nc.Request(b.subject, []byte(body), labTimeout(o.timeout))
		if err != nil {
			return nil, err
		}
		return m.Data, nil
	}

	var chosen, reported, heard []time.Duration
	missed := 0
	var missedBy [3]int
	for i := range o.trials {
		if ctx.Err() != nil {
			return nil
		}
		start := time.Now()
		reply, err := request(`{"gl_path":"` + p.Ingress + `"}`)
		if err != nil {
			return fmt.Errorf("request context: %w", err)
		}
		var r struct {
			GLPath string `json:"gl_path"`
		}
		if err := json.Unmarshal(reply, &r); err != nil || r.GLPath == "" {
			return fmt.Errorf("request context answered %q", reply)
		}
		router := r.GLPath
		d, ok := every(start, router, func(v broker.RouterView) bool { return v.InFlight == 1 })
		if ok {
			chosen = append(chosen, d)
		} else {
			missed++
			missedBy[0]++
		}

		start = time.Now()
		if _, err := request(`{"gl_path":"` + router + `","egress_status_code":200}`); err != nil {
			return fmt.Errorf("response context: %w", err)
		}
		if d, ok = every(start, router, func(v broker.RouterView) bool { return v.InFlight == 0 }); ok {
			reported = append(reported, d)
		} else {
			missed++
			missedBy[1]++
		}

		// What is left of the router's rate limit: a new figure each
		// trial, so that each is a change.
		left := int64(i%99) + 1
		start = time.Now()
		// Finished as gecholog's are, before they are published: one
		// that finished in the future, later than the next, would leave
		// the next unheard as older news of what is left.
		latency := time.Duration(i%50+1) * time.Millisecond
		tx := standin.Transaction(standin.Finished{Ingress: p.Ingress, Router: router, Start: start.Add(-latency), Latency: latency,
			Payload: 1024, Headers: map[string]string{"x-ratelimit-remaining-requests": strconv.FormatInt(left, 10), "x-ratelimit-limit-requests": "100",
				"x-ratelimit-reset-requests": "1m0s"}})
		if err := l.nc.Publish(b.loggerSubject(), tx); err != nil {
			return err
		}
		if d, ok = every(start, router, func(v broker.RouterView) bool {
			return v.HeadroomKnown && v.Headroom == float64(left)/100 && v.LatencyKnown
		}); ok {
			heard = append(heard, d)
		} else {
			missed++
			missedBy[2]++
		}
	}

	fmt.Fprintf(b.out, "%-60s %9s %9s %9s\n", "every replica's view shows", "p50", "p99", "max")
	worst := time.Duration(0)
	for _, s := range []struct {
		name string
		d    []time.Duration
	}{
		{"a call chosen: in flight (the replicas tell each other)", chosen},
		{"its report: no longer in flight", reported},
		{"a transaction: latency and headroom (read by one, told)", heard},
	} {
		slices.Sort(s.d)
		r := benchResult{lat: s.d}
		fmt.Fprintf(b.out, "%-60s %9s %9s %9s\n", s.name, fmtLatency(r.pct(0.5)), fmtLatency(r.pct(0.99)), fmtLatency(r.pct(1)))
		worst = max(worst, r.pct(1))
	}
	fmt.Fprintf(b.out, "\nchanges %d, not shown by every replica within 5s %d (in flight %d, report %d, transaction %d)\n", len(chosen)+len(reported)+len(heard)+missed, missed, missedBy[0], missedBy[1], missedBy[2])
	fmt.Fprintf(b.out, "views agree within %s of a change (target ≤ 100ms: %s)\n", fmtLatency(worst), targetVerdict(missed == 0 && worst <= 100*time.Millisecond))
	return nil
}
