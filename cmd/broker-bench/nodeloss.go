package main

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/gecholog/broker/internal/natsbin"
	"github.com/gecholog/broker/internal/testutil/nodeloss"
)

// nodeloss loses one node of a three-node cluster of nats-server
// processes, with SIGKILL, again and again for each kind of node, while
// failure reports reach three replicas before and after the loss, and
// reports how long every replica took to agree on each, how long the
// replicas on the lost node took to answer again, and any disable lost.
func (b *bench) nodeloss(ctx context.Context) error {
	bin, built, err := natsbin.Install(natsbin.Embedded)
	if err != nil {
		return err
	}
	if built {
		fmt.Fprintf(b.out, "built nats-server %s into %s\n", natsbin.Embedded, bin)
	}
	fmt.Fprintf(b.out, "3 nats-server %s processes in a cluster, the bucket on all three; 3 replicas given all three URLs; DISABLED_TIME %v.\n"+
		"Each run: 20 failure reports 10 ms apart through a node that stays; the lost node is killed with SIGKILL before the 11th.\n\n",
		natsbin.Embedded, b.o.nodelossDisabled)
	fmt.Fprintf(b.out, "%-16s %5s %10s %10s %10s %14s %14s %9s %10s %11s\n",
		"lost", "runs", "agree p50", "agree p99", "agree max", "answer p50", "answer max", "not agreed", "not landed", "unanswered")
	fast, kept := true, true
	for _, v := range []nodeloss.Victim{nodeloss.MetaLeader, nodeloss.StreamLeader, nodeloss.Neither} {
		var agree, answer []time.Duration
		var notAgreed, notLanded, unanswered int
		for range b.o.runs {
			res, err := nodeloss.Run(ctx, nodeloss.Options{Server: bin, Victim: v, InFlight: true, DisabledTime: b.o.nodelossDisabled})
			if ctx.Err() != nil {
				return nil
			}
			if err != nil {
				return fmt.Errorf("%s: %w", v, err)
			}
			agree = append(agree, res.Agreement...)
			answer = append(answer, res.Answering...)
			notAgreed += res.NotAgreed
			notLanded += res.NotLanded
			unanswered += res.Unanswered
		}
		slices.Sort(agree)
		slices.Sort(answer)
		a, w := benchResult{lat: agree}, benchResult{lat: answer}
		pct := func(r benchResult, q float64) string {
			if len(r.lat) == 0 {
				return "-" // no replica was on the lost node
			}
			return fmtLatency(r.pct(q))
		}
		fmt.Fprintf(b.out, "%-16s %5d %10s %10s %10s %14s %14s %9d %10d %11d\n", v, b.o.runs,
			pct(a, 0.5), pct(a, 0.99), pct(a, 1), pct(w, 0.5), pct(w, 1), notAgreed, notLanded, unanswered)
		fast = fast && a.pct(1) <= time.Second && w.pct(1) <= 100*time.Millisecond
		kept = kept && notAgreed == 0 && notLanded == 0
	}
	// Two verdicts: the times are the machine's as much as the broker's,
	// and no disable lost is the broker's alone.
	fmt.Fprintf(b.out, "\nagreement ≤ 1s in every run, answering again ≤ 100ms: %s\n", targetVerdict(fast))
	fmt.Fprintf(b.out, "no disable lost (every report agreed on and landed): %s\n", targetVerdict(kept))
	fmt.Fprintln(b.out, "(answer: replicas that were connected to the lost node, from the loss to their first answer through another node;")
	fmt.Fprintln(b.out, " unanswered: reports sent while the replica they went to was moving, which gecholog's own call would time out)")
	return nil
}
