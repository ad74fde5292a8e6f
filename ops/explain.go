package ops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/safetext"
	"github.com/gecholog/broker/replica"
)

// explainTimeout bounds how long explain waits for the replica: it
// answers from memory, at once.
const explainTimeout = 5 * time.Second

// maxExplained bounds the answer read: a pool of a thousand routers is
// well under it.
const maxExplained = 1 << 20

// ExplainOptions are what `broker explain` asks and how it prints it.
type ExplainOptions struct {
	// JSON prints the replica's answer as JSON instead of the table.
	JSON bool
	// Session, when not "", is a session header's value: the answer says
	// where that session's next call goes. It is sent to the replica and
	// never printed.
	Session string
}

// Explain asks the replica whose listener is on addr why the calls for
// ingress go where they go, and prints its answer as a table, or as JSON
// with o.JSON.
func Explain(ctx context.Context, addr, ingress string, o ExplainOptions, stdout io.Writer) error {
	if addr == "" {
		return errors.New("metrics-addr: not set; explain asks a replica's listener, which serves only when BROKER_METRICS_ADDR is set (e.g. :9090): set it for the replica and for this command")
	}
	if !broker.ValidPath(ingress) {
		return fmt.Errorf("ingress \"%s\": a pool's ingress is a router path, which starts and ends with / and holds only letters, digits and /, as in broker explain /azure/",
			safetext.Clip(ingress, 100))
	}
	base, err := listenerURL(addr)
	if err != nil {
		return err
	}
	u := base + "/explain?ingress=" + url.QueryEscape(ingress)
	if o.Session != "" {
		u += "&session=" + url.QueryEscape(o.Session)
	}
	ctx, cancel := context.WithTimeout(ctx, explainTimeout)
	defer cancel()
	resp, err := getOnce(ctx, addr, u)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("%s: no answer within %v: is the replica running, and is BROKER_METRICS_ADDR its listener?", base, explainTimeout)
		}
		return fmt.Errorf("%s: %w", base, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxExplained+1))
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%s: the answer did not end within %v", base, explainTimeout)
	case err != nil:
		return fmt.Errorf("%s: reading the answer: %w", base, err)
	case len(body) > maxExplained:
		return fmt.Errorf("%s: the answer is larger than %d bytes: is BROKER_METRICS_ADDR a broker replica's listener?", base, maxExplained)
	}
	var x replica.Explained
	if err := json.Unmarshal(body, &x); err != nil {
		return fmt.Errorf("%s answered %s, not an explanation (%v): is BROKER_METRICS_ADDR a broker replica's listener?",
			base, safetext.Clip(resp.Status, 60), safetext.Clip(err.Error(), 100))
	}
	x = safeExplained(x)
	switch {
	case x.Error != "":
		msg := x.Error
		if len(x.Pools) > 0 {
			msg += "; the pools are " + strings.Join(x.Pools, ", ")
		}
		return errors.New(msg)
	case resp.StatusCode != http.StatusOK:
		return fmt.Errorf("%s answered %s", base, safetext.Clip(resp.Status, 60))
	}
	if o.JSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(x)
	}
	return explainTable(x, stdout)
}

// safeExplained is x with every text safe to show and every number within
// its range, whatever sent it.
func safeExplained(x replica.Explained) replica.Explained {
	line := func(s *string) { *s = safetext.Clip(*s, 4*safetext.MaxShown) }
	share := func(f *float64) {
		if f != nil {
			*f = min(max(*f, 0), 1) // NaN cannot come from JSON
		}
	}
	line(&x.Error)
	for i := range x.Pools {
		line(&x.Pools[i])
	}
	for _, s := range []*string{&x.Replica, &x.Ingress, &x.Strategy, &x.AllDisabled, &x.Rule, &x.Why} {
		line(s)
	}
	if x.Session != nil {
		line(&x.Session.Router)
		line(&x.Session.NoKey)
	}
	if a := x.Affinity; a != nil {
		line(&a.Header)
		a.LoadFactor = min(max(a.LoadFactor, broker.LoadFactorRange.Min), broker.LoadFactorRange.Max)
	}
	if x.Config != nil {
		line(&x.Config.Refused)
		line(&x.Config.Note)
	}
	for i := range x.Routers {
		r := &x.Routers[i]
		for _, s := range []*string{&r.Router, &r.State, &r.Why, &r.Reason, &r.By, &r.Probe, &r.Reads} {
			line(s)
		}
		share(r.Share)
		share(r.Headroom)
		share(&r.RecentShare)
		r.InFlight = max(r.InFlight, 0)
		r.Tokens.Input, r.Tokens.Output, r.Tokens.CachedInput = max(r.Tokens.Input, 0), max(r.Tokens.Output, 0), max(r.Tokens.CachedInput, 0)
		if r.Spend != nil {
			*r.Spend = max(*r.Spend, 0)
		}
		if r.LatencyMS != nil {
			*r.LatencyMS = min(max(*r.LatencyMS, 0), float64(24*time.Hour/time.Millisecond))
		}
	}
	return x
}

// explainTable prints x for a reader: what answers the calls and why, and a
// line for each router.
func explainTable(x replica.Explained, stdout io.Writer) error {
	head := fmt.Sprintf("%s on replica %s", x.Ingress, x.Replica)
	if c := x.Config; c != nil {
		if c.Revision == 0 {
			head += ", its own settings"
		} else {
			head += fmt.Sprintf(", configuration revision %d", c.Revision)
		}
		for _, s := range []string{c.Refused, c.Note} {
			if s != "" {
				head += " (" + s + ")"
			}
		}
	}
	fmt.Fprintf(stdout, "%s; strategy %s, all-disabled %s\n", head, x.Strategy, x.AllDisabled)
	if a := x.Affinity; a != nil {
		fmt.Fprintf(stdout, "%s\n", affinityLine(*a))
	}
	if x.Session != nil {
		fmt.Fprintf(stdout, "%s\n", sessionLine(*x.Session))
	}
	fmt.Fprintf(stdout, "%s\n", upper(x.Why))
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ROUTER\tTIER\tWEIGHT\tSTATE\tSHARE\tIN-FLIGHT\tLATENCY\tHEADROOM\tTOKENS IN/OUT/CACHED\tSPEND\tWHY")
	for _, r := range x.Routers {
		latency := ""
		if r.LatencyMS != nil {
			latency = time.Duration(*r.LatencyMS * float64(time.Millisecond)).Round(time.Millisecond / 10).String()
		}
		spend := ""
		if r.Spend != nil {
			spend = spendCell(*r.Spend)
		}
		tokens := tokenCell(r.Tokens.Input) + "/" + tokenCell(r.Tokens.Output) + "/" + tokenCell(r.Tokens.CachedInput)
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n", r.Router, r.Tier, r.Weight, r.State,
			percentCell(r.Share), r.InFlight, latency, percentCell(r.Headroom), tokens, spend, r.Why)
	}
	return tw.Flush()
}

// spendCell is a spend in a few characters: 0, 0.0021, 6.10, 1234.
func spendCell(x float64) string {
	switch {
	case x == 0:
		return "0"
	case x < 0.01:
		return strconv.FormatFloat(x, 'g', 2, 64)
	case x < 100:
		return strconv.FormatFloat(x, 'f', 2, 64)
	}
	return strconv.FormatFloat(x, 'f', 0, 64)
}

// tokenCell is a count of tokens in a few characters: 950, 12.3k, 4.1M.
func tokenCell(n int64) string {
	switch {
	case n < 1000:
		return strconv.FormatInt(n, 10)
	case n < 1_000_000:
		return strconv.FormatFloat(float64(n)/1e3, 'f', 1, 64) + "k"
	case n < 1_000_000_000:
		return strconv.FormatFloat(float64(n)/1e6, 'f', 1, 64) + "M"
	}
	return strconv.FormatFloat(float64(n)/1e9, 'f', 1, 64) + "G"
}

// upper is s with its first letter a capital.
func upper(s string) string {
	if s == "" || s[0] < 'a' || s[0] > 'z' {
		return s
	}
	return string(s[0]-'a'+'A') + s[1:]
}
