package main

// The affinity mode's report: what the runs measured, against the issue's
// targets.

import (
	"cmp"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/gecholog/broker/broker"
)

// affinityHealthy reports the run with every router healthy.
func (b *bench) affinityHealthy(p broker.Pool, sessions []*affSession, calls int) {
	var first, firstHome, later, laterHome, keyed int
	byRouter, homes := map[string]int{}, map[string]int{}
	for _, s := range sessions {
		home := s.home()
		if home == "" {
			continue
		}
		homes[home]++
		if s.routers[0] != "" {
			first++
			if s.routers[0] == home {
				firstHome++
			}
		}
		for t := 1; t < calls; t++ {
			r := s.routers[t]
			if r == "" {
				continue
			}
			keyed++
			byRouter[r]++
			if t >= 2 {
				later++
				if r == home {
					laterHome++
				}
			}
		}
	}
	fmt.Fprintf(b.out, "All healthy: %s, %d sessions × %d calls\n", p.Ingress, len(sessions), calls)
	fmt.Fprintf(b.out, "%-34s %8s   %s\n", "", "calls", "on the session's router")
	total := 0
	for _, r := range p.Routers {
		total += r.Weight
	}
	chance := 0.0 // a keyless call lands on the session's router by chance
	for _, r := range p.Routers {
		chance += math.Pow(float64(r.Weight)/float64(total), 2)
	}
	fmt.Fprintf(b.out, "%-34s %8d   %5.1f%% (no key: the pool's strategy; chance gives %.1f%%)\n",
		"first call (no Session-Id)", first, pct(firstHome, first), 100*chance)
	fmt.Fprintf(b.out, "%-34s %8d   %5.1f%% (target ≥ 99%%: %s)\n", "later keyed calls (3rd on)", later, pct(laterHome, later),
		targetVerdict(later > 0 && pct(laterHome, later) >= 99))
	var ownCalls, onOwn, firstNotOwn int
	for _, s := range sessions {
		if h := s.home(); h != "" && h != s.own {
			firstNotOwn++
		}
		for t := 1; t < calls; t++ {
			if r := s.routers[t]; r != "" {
				ownCalls++
				if r == s.own {
					onOwn++
				}
			}
		}
	}
	fmt.Fprintf(b.out, "%-34s %8d   %5.1f%% on the session's own router (its order, as every replica chooses below the load bound);\n",
		"keyed calls (2nd on)", ownCalls, pct(onOwn, ownCalls))
	fmt.Fprintf(b.out, "%-34s %8s   sessions whose first keyed call was not on their own router: %d\n", "", "", firstNotOwn)
	off, offSessions, back, backOf := offHome(sessions, 2, calls)
	fmt.Fprintf(b.out, "later keyed calls off their session's router: %d, in %d sessions; the session's next call back on it: %d of %d\n",
		off, offSessions, back, backOf)
	fmt.Fprintf(b.out, "\n%-12s %7s %12s %9s %12s %8s %15s\n", "router", "weight", "weight share", "sessions", "keyed calls", "share", "share / weight")
	within := keyed > 0
	for _, r := range p.Routers {
		want := float64(r.Weight) / float64(total)
		got := float64(byRouter[r.Path]) / float64(max(keyed, 1))
		ratio := got / want
		within = within && math.Abs(ratio-1) <= 0.10
		fmt.Fprintf(b.out, "%-12s %7d %11.1f%% %9d %12d %7.1f%% %15.3f\n", r.Path, r.Weight, 100*want, homes[r.Path], byRouter[r.Path], 100*got, ratio)
	}
	fmt.Fprintf(b.out, "every router's share of the keyed calls within 10%% of its weight's: %s\n", targetVerdict(within))
	// The broker's bound on a router's calls in flight (see Tier.affine):
	// ceil(f × s + 3 √s), s = (tier in flight + 1) × w / W, at least 8. Half
	// the callers are on the random pool, whose calls are made in the
	// same rounds.
	f := cmp.Or(p.Affinity.LoadFactor, broker.DefaultLoadFactor)
	inFlight := b.o.callers / 2
	var bounds []string
	for _, r := range p.Routers {
		share := float64(r.Weight) / float64(total)
		s := float64(inFlight+1) * share
		bounds = append(bounds, fmt.Sprintf("%s %.0f (its share %.0f)", r.Path,
			max(math.Ceil(f*s+3*math.Sqrt(s)), 8), float64(inFlight)*share))
	}
	fmt.Fprintf(b.out, "about %d of the %d calls in flight (-callers) are %s's, the rest the random pool's; each router's load bound\n", inFlight, b.o.callers, p.Ingress)
	fmt.Fprintf(b.out, "(load_factor %g, plus 3 √share, at least 8) is then %s; a keyed call whose router\n", f, strings.Join(bounds, ", "))
	fmt.Fprintf(b.out, "is at its bound goes to the next of its session's order (the calls off their router above).\n\n")
}

// affinityMoved reports the run with out disabled before call before.
func (b *bench) affinityMoved(p broker.Pool, sessions []*affSession, out string, before, calls int, seen time.Duration) {
	var outs, movedAtOnce, stayed, toOut, others, movedBefore, movedAfter int
	for _, s := range sessions {
		home := s.home()
		if home == "" {
			continue
		}
		for t := before; t < calls; t++ {
			if s.routers[t] == out {
				toOut++
			}
		}
		if home == out {
			outs++
			to := s.routers[before]
			if to != "" && to != out {
				movedAtOnce++
				still := true
				for t := before + 1; t < calls; t++ {
					still = still && (s.routers[t] == "" || s.routers[t] == to)
				}
				if still {
					stayed++
				}
			}
			continue
		}
		others++
		if movedIn(s, home, 2, before) {
			movedBefore++
		}
		if movedIn(s, home, before, calls) {
			movedAfter++
		}
	}
	fmt.Fprintf(b.out, "One router disabled mid-run: %s, %d sessions × %d calls, all %d callers on it (twice the calls in flight of the\n",
		p.Ingress, len(sessions), calls, b.o.callers)
	fmt.Fprintf(b.out, "all-healthy run's pool); after call %d of every session, %s disabled by hand\n", before, out)
	then := fmt.Sprintf("calls %d to %d", before+1, calls)
	if before+1 == calls {
		then = fmt.Sprintf("call %d", calls)
	}
	fmt.Fprintf(b.out, "(ops.DisableRouter, as `broker disable` writes it); the last replica logged it %v after the write; then %s.\n",
		seen.Round(time.Millisecond), then)
	fmt.Fprintf(b.out, "sessions of %s: %d; moved on their first call after the disable: %d (target all: %s); then stayed where they moved: %d\n",
		out, outs, movedAtOnce, targetVerdict(movedAtOnce == outs), stayed)
	fmt.Fprintf(b.out, "calls to %s after the disable: %d (target 0: %s)\n", out, toOut, targetVerdict(toOut == 0))
	fmt.Fprintf(b.out, "sessions of the other routers: %d; with a call off their router after the disable: %d (target 0: %s);\n",
		others, movedAfter, targetVerdict(movedAfter == 0))
	fmt.Fprintf(b.out, "before it, in calls 3 to %d (the load bound's passing over, as in the all-healthy run): %d\n", before, movedBefore)
	// By the sessions' own routers (their order, below the load bound).
	var ownOut, toNext, afterCalls, onOwn, changed int
	for _, s := range sessions {
		if s.own != out && s.after != s.own {
			changed++
		}
		if s.own == out && s.routers[before] == s.after {
			toNext++
		}
		if s.own == out {
			ownOut++
		}
		for t := before; t < calls; t++ {
			if r := s.routers[t]; r != "" {
				afterCalls++
				if r == s.after {
					onOwn++
				}
			}
		}
	}
	fmt.Fprintf(b.out, "by the sessions' own routers (their order, as every replica chooses below the load bound): %d of %d sessions of %s\n", toNext, ownOut, out)
	fmt.Fprintf(b.out, "went to their own next router at once; calls after the disable on the session's own router without %s: %.1f%%;\n", out, pct(onOwn, afterCalls))
	fmt.Fprintf(b.out, "sessions of other routers whose own router the disable changed: %d (target 0: %s)\n\n", changed, targetVerdict(changed == 0))
}

// movedIn says a call of s in [from, to) went elsewhere than home.
func movedIn(s *affSession, home string, from, to int) bool {
	for t := from; t < to; t++ {
		if r := s.routers[t]; r != "" && r != home {
			return true
		}
	}
	return false
}

// offHome counts the calls in [from, to) of sessions that went elsewhere
// than their session's router, the sessions they are in, and of those
// followed by another call, how many of the next calls were back on it.
func offHome(sessions []*affSession, from, to int) (off, in, back, of int) {
	for _, s := range sessions {
		home := s.home()
		if home == "" {
			continue
		}
		was := off
		for t := from; t < to; t++ {
			r := s.routers[t]
			if r == "" || r == home {
				continue
			}
			off++
			if t+1 < to && s.routers[t+1] != "" {
				of++
				if s.routers[t+1] == home {
					back++
				}
			}
		}
		if off > was {
			in++
		}
	}
	return off, in, back, of
}

// affinityCaching reports the cached input tokens of the healthy run.
func (b *bench) affinityCaching(aff, rnd broker.Pool, caches map[string]*promptCache, calls int) {
	fmt.Fprintf(b.out, "Prompt caching, in the all-healthy run: every deployment keeps a conversation's prompt prefix for %v and reports the\n", cacheLifetime)
	fmt.Fprintf(b.out, "part a prompt shares with it as usage.prompt_tokens_details.cached_tokens (in blocks of 128, as OpenAI does). A call's\n")
	fmt.Fprintf(b.out, "prompt is the conversation so far: %d tokens on the first call, %d on call %d.\n", promptTokens(2), promptTokens(2*calls), calls)
	fmt.Fprintf(b.out, "%-18s %8s %14s %14s %8s %22s\n", "", "calls", "input tokens", "cached", "share", "calls with cached")
	share := map[string]float64{}
	for _, p := range []broker.Pool{aff, rnd} {
		var n, hits, in, cached int64
		for _, r := range p.Routers {
			c := caches[r.Path]
			n, hits, in, cached = n+c.calls.Load(), hits+c.hits.Load(), in+c.input.Load(), cached+c.cached.Load()
		}
		share[p.Ingress] = 100 * float64(cached) / float64(max(in, 1))
		name := p.Ingress + " (random)"
		if p.Affinity.On() {
			name = p.Ingress + " (affinity)"
		}
		fmt.Fprintf(b.out, "%-18s %8d %14d %14d %7.1f%% %21.1f%%\n", name, n, in, cached, share[p.Ingress], 100*float64(hits)/float64(max(n, 1)))
	}
	fmt.Fprintf(b.out, "affinity: cached input tokens %.1f%% against random's %.1f%% (%.2f×)\n",
		share[aff.Ingress], share[rnd.Ingress], share[aff.Ingress]/max(share[rnd.Ingress], 1e-9))
}
