package statuspage

import (
	"bytes"
	"cmp"
	"embed"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/safetext"
)

// Source is the running replica the page reads. Its methods are called for
// every update and must be cheap and safe for concurrent use.
type Source interface {
	// Status says who and where the replica is now.
	Status() Status
	// Broker is the replica's decision core; nil until it has connected.
	Broker() *broker.Broker
}

// Status is the replica's standing, as its Source tells it.
type Status struct {
	ID        string // "" while not known
	Connected bool   // to NATS
	Server    string // the NATS server, without credentials
	Mode      string // "ttl", "expiry" or "local"; "" until decided
	NotReady  string // why it takes no calls; "" when it does
	Stale     string // why its view may be stale (the bucket does not answer); "" when it is not
	// Config is the fleet's configuration the replica runs by.
	Config Config
	// Fleet is every replica's revision as the replica hears it, this
	// one's among them, in any order; the page bounds what it shows.
	Fleet Fleet
	// SessionHeader is the header the replica's pools with "affinity":
	// "session" read (a name).
	SessionHeader string
}

const (
	// check is how often an open page's event stream looks for a change
	// to send: a disable shows within a tenth of a second of the replica
	// hearing of it.
	check = 100 * time.Millisecond
	// heartbeat is how often a snapshot is sent when nothing changed, so
	// the page knows the replica still answers.
	heartbeat = time.Second
	// maxStreams bounds the event streams open at once: the listener has
	// no authentication, and each stream costs a goroutine. Past it, a
	// page polls /status.json instead.
	maxStreams = 64
	// maxUnknownShown bounds the routers no pool has that the page names;
	// UnknownMore counts the rest, which `broker status` lists.
	maxUnknownShown = 20
	// maxReplicasShown bounds the replicas the page lists: a fleet is a
	// few dozen, and anyone who may publish on the stats subject can make
	// up more; ReplicasMore counts the rest.
	maxReplicasShown = 64
)

//go:embed assets
var assets embed.FS

// Page is the status page of one replica. Register its handlers on the
// replica's listener; Close ends the event streams of open pages, which
// an http.Server's Shutdown would otherwise wait for.
type Page struct {
	src     Source
	streams chan struct{} // one token per open event stream
	done    chan struct{}
	once    sync.Once
	shares  shares
	pins    pins
}

// New returns the page of the replica src.
func New(src Source) *Page {
	return &Page{src: src, streams: make(chan struct{}, maxStreams), done: make(chan struct{})}
}

// Register adds the page's handlers to mux: the page at /, its style sheet
// and script, /status.json and the event stream /events. Every one is a
// GET: nothing on the page changes anything.
func (p *Page) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /{$}", asset("assets/index.html", "text/html; charset=utf-8"))
	mux.HandleFunc("GET /status.css", asset("assets/status.css", "text/css; charset=utf-8"))
	mux.HandleFunc("GET /status.js", asset("assets/status.js", "text/javascript; charset=utf-8"))
	mux.HandleFunc("GET /status.json", p.json)
	mux.HandleFunc("GET /events", p.events)
}

// Close ends every open event stream; the pages reconnect to whatever
// answers next.
func (p *Page) Close() { p.once.Do(func() { close(p.done) }) }

// Snapshot is what the page shows at now.
func (p *Page) Snapshot(now time.Time) Snapshot {
	st := p.src.Status()
	s := Snapshot{Replica: st.ID, At: now.UTC(), Mode: st.Mode, NotReady: st.NotReady, Stale: st.Stale, Config: st.Config,
		NATS: NATS{Connected: st.Connected, Server: st.Server}, UnknownRouters: []string{}, Notes: []string{},
		Choices: Window{Scope: "this replica"}, Fleet: fleet(st.Fleet)}
	b := p.src.Broker()
	switch {
	case b == nil:
		s.Notes = append(s.Notes, "The pools and router health are not known yet: the replica has not connected to NATS and read the bucket ("+notReady(st)+").")
		s.escape()
		return s
	case !st.Connected:
		s.Notes = append(s.Notes, "Not connected to NATS: this is the router health the replica last heard. Changes made meanwhile, by other replicas or by hand, are not known until it reconnects.")
	case st.Stale != "":
		s.Notes = append(s.Notes, "Stale: the "+st.Stale+". This is the router health the replica last heard plus the failures it sees itself; changes made meanwhile by replicas it cannot hear, or by hand, are not known until the bucket answers.")
	}
	if st.Mode == "local" {
		s.Notes = append(s.Notes, "Local mode: the NATS server has no JetStream, so this replica keeps its own disables. Other replicas keep theirs and may show different ones.")
	}
	views := b.View(now)
	var chosen []uint64
	s.Choices.Seconds, chosen = p.shares.recent(now, views)
	for i, v := range views {
		if len(s.Pools) == 0 || s.Pools[len(s.Pools)-1].Ingress != v.Ingress {
			s.Pools = append(s.Pools, Pool{Ingress: v.Ingress, Affinity: affinity(b.AffinityOf([]byte(v.Ingress)), st.SessionHeader)})
		}
		pool := &s.Pools[len(s.Pools)-1]
		r := router(v)
		r.Chosen = chosen[i]
		pool.Routers = append(pool.Routers, r)
	}
	p.pins.fill(b, s.Pools, now)
	fleet := false
	for _, pool := range s.Pools {
		var total uint64
		for _, r := range pool.Routers {
			total += r.Chosen
		}
		for i := range pool.Routers {
			if total > 0 {
				pool.Routers[i].ReplicaShare = ptr(float64(pool.Routers[i].Chosen) / float64(total))
			}
		}
	}
	i := 0
	for p := range s.Pools {
		start, some := i, false
		for range s.Pools[p].Routers {
			some = some || views[i].Share > 0
			i++
		}
		if !some {
			continue // the fleet chose none of the pool's routers lately
		}
		fleet = true
		for j := range s.Pools[p].Routers {
			s.Pools[p].Routers[j].Share = ptr(views[start+j].Share)
		}
	}
	if fleet {
		// The fleet's choices are counted within the in-flight bound.
		s.Choices = Window{Seconds: b.InFlightBound().Seconds(), Scope: "the whole fleet"}
	}
	unknown := b.Unknown()
	if len(unknown) > maxUnknownShown {
		s.UnknownMore = len(unknown) - maxUnknownShown
		unknown = unknown[:maxUnknownShown]
	}
	s.UnknownRouters = append(s.UnknownRouters, unknown...)
	s.escape()
	return s
}

// escape shows every text that came from the bucket or the bus escaped
// and cut to safetext.MaxShown, as status does: a router name or reason
// with a bidirectional override or a control character reads as written,
// and a huge one costs an open page no more than a short one.
func (s *Snapshot) escape() {
	show := func(p *string) { *p = safetext.Clip(*p, safetext.MaxShown) }
	show(&s.Replica)
	show(&s.NATS.Server)
	show(&s.NotReady)
	show(&s.Config.Refused)
	show(&s.Config.Note)
	show(&s.Fleet.Summary)
	for i := range s.Fleet.Replicas {
		r := &s.Fleet.Replicas[i]
		show(&r.ID)
		show(&r.Refused)
		show(&r.Drift)
	}
	for i := range s.Pools {
		p := &s.Pools[i]
		show(&p.Ingress)
		if p.Affinity != nil {
			show(&p.Affinity.Header)
		}
		for j := range p.Routers {
			r := &p.Routers[j]
			show(&r.Router)
			show(&r.Reason)
			show(&r.By)
			show(&r.Probe)
		}
	}
	for i := range s.UnknownRouters {
		show(&s.UnknownRouters[i])
	}
}

// fleet is f as the page lists it: this replica first, then those out of
// step, then the rest, each in ID order, at most maxReplicasShown.
func fleet(f Fleet) Fleet {
	rank := func(r Replica) int {
		switch {
		case r.This:
			return 0
		case r.Drift != "":
			return 1
		}
		return 2
	}
	f.Replicas = slices.SortedFunc(slices.Values(f.Replicas), func(a, b Replica) int {
		return cmp.Or(cmp.Compare(rank(a), rank(b)), strings.Compare(a.ID, b.ID))
	})
	f.Sessions = sessions(f.Replicas)
	if len(f.Replicas) > maxReplicasShown {
		f.ReplicasMore += len(f.Replicas) - maxReplicasShown
		f.Replicas = f.Replicas[:maxReplicasShown]
	}
	if f.Replicas == nil {
		f.Replicas = []Replica{}
	}
	return f
}

func notReady(st Status) string {
	if st.NotReady != "" {
		return st.NotReady
	}
	return "not connected to NATS"
}

// headers are every answer's: the page runs only its own script and style
// sheet, so a router name or reason that a forged record fills with markup
// cannot run, and no other site may frame the page.
func headers(w http.ResponseWriter, contentType string) {
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
}

func asset(name, contentType string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		b, err := assets.ReadFile(name)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		headers(w, contentType)
		w.Write(b)
	}
}

func (p *Page) json(w http.ResponseWriter, _ *http.Request) {
	headers(w, "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(p.Snapshot(time.Now()))
}

// events streams a snapshot whenever one differs from the last sent, and
// otherwise the replica's clock once a second (an "at" event), until the
// page goes away or Close.
func (p *Page) events(w http.ResponseWriter, r *http.Request) {
	select {
	case p.streams <- struct{}{}:
		defer func() { <-p.streams }()
	default:
		http.Error(w, "too many open pages; this one polls /status.json instead", http.StatusServiceUnavailable)
		return
	}
	rc := http.NewResponseController(w)
	headers(w, "text/event-stream")
	// The browser's EventSource reconnects after this many milliseconds
	// when the stream ends, as when the replica restarts.
	if _, err := io.WriteString(w, "retry: 1000\n\n"); err != nil {
		return
	}
	tick := time.NewTicker(check)
	defer tick.Stop()
	var last []byte
	var sent time.Time
	for {
		now := time.Now()
		s := p.Snapshot(now)
		s.At = time.Time{} // the clock alone is no change
		same, err := json.Marshal(s)
		if err != nil {
			return
		}
		var event []byte
		switch {
		case !bytes.Equal(same, last):
			s.At = now.UTC()
			data, _ := json.Marshal(s)
			event = append(append([]byte("data: "), data...), "\n\n"...)
		case now.Sub(sent) >= heartbeat:
			// Nothing changed: only the replica's clock, so that the page
			// knows it still answers, not the snapshot again.
			at, _ := json.Marshal(struct {
				At time.Time `json:"at"`
			}{now.UTC()})
			event = append(append([]byte("event: at\ndata: "), at...), "\n\n"...)
		}
		if event != nil {
			if _, err := w.Write(event); err != nil {
				return
			}
			if err := rc.Flush(); err != nil {
				return
			}
			last, sent = same, now
		}
		select {
		case <-r.Context().Done():
			return
		case <-p.done:
			return
		case <-tick.C:
		}
	}
}
