package statuspage_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/replica"
	"github.com/gecholog/broker/statuspage"
)

func TestBeforeConnectingThePageSaysThePoolsAreNotKnownYet(t *testing.T) {
	is := is.New(t)
	_, srv := serve(t, source{status: statuspage.Status{NotReady: "not connected to NATS"}})
	resp, body := get(t, srv.URL+"/status.json")
	is.Equal(resp.StatusCode, http.StatusOK)
	var s map[string]any
	is.NoErr(json.Unmarshal([]byte(body), &s))
	is.Equal(s["pools"], nil)                         // no pools, rather than none
	is.Equal(s["unknown_routers"], []any{})           // an empty list, not null
	is.Equal(s["not_ready"], "not connected to NATS") // why
	notes := s["notes"].([]any)
	is.Equal(len(notes), 1)
	is.True(strings.Contains(notes[0].(string), "not known yet")) // said in words
}

func TestThePageIsReadOnlyAndRunsOnlyItsOwnScript(t *testing.T) {
	_, srv := serve(t, source{})
	for _, path := range []string{"/", "/status.css", "/status.js", "/status.json"} {
		t.Run(path, func(t *testing.T) {
			is := is.New(t)
			resp, _ := get(t, srv.URL+path)
			is.Equal(resp.StatusCode, http.StatusOK)
			csp := resp.Header.Get("Content-Security-Policy")
			is.True(strings.Contains(csp, "script-src 'self'"))  // no inline script runs
			is.True(strings.Contains(csp, "default-src 'none'")) // nothing from elsewhere
			is.Equal(resp.Header.Get("X-Content-Type-Options"), "nosniff")
			for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch} {
				req, err := http.NewRequest(method, srv.URL+path, strings.NewReader("{}"))
				is.NoErr(err)
				resp, err := http.DefaultClient.Do(req)
				is.NoErr(err)
				resp.Body.Close()
				is.Equal(resp.StatusCode, http.StatusMethodNotAllowed) // nothing on the page changes anything
			}
		})
	}
	is := is.New(t)
	resp, _ := get(t, srv.URL+"/nothing-here")
	is.Equal(resp.StatusCode, http.StatusNotFound) // only / itself is the page
	_, page := get(t, srv.URL+"/")
	is.True(!strings.Contains(page, "<script>")) // the script is a file of its own
	says(t, "the page", page, `name="viewport"`) // it fits a phone's screen
}

func TestEventStreamsAreBoundedAndEndWhenThePageCloses(t *testing.T) {
	is := is.New(t)
	p, srv := serve(t, source{})
	client := &http.Client{Timeout: 10 * time.Second} // bounds every read below
	var bodies []io.ReadCloser
	defer func() {
		for _, b := range bodies {
			b.Close()
		}
	}()
	for range 64 {
		resp, err := client.Get(srv.URL + "/events")
		is.NoErr(err)
		is.Equal(resp.StatusCode, http.StatusOK)
		is.Equal(resp.Header.Get("Content-Type"), "text/event-stream")
		bodies = append(bodies, resp.Body)
		// Each stream sends a snapshot at once.
		r := bufio.NewReader(resp.Body)
		for {
			line, err := r.ReadString('\n')
			is.NoErr(err)
			if strings.HasPrefix(line, "data: {") {
				break
			}
		}
	}
	resp, body := get(t, srv.URL+"/events")
	is.Equal(resp.StatusCode, http.StatusServiceUnavailable) // one too many
	says(t, "the refusal", body, "polls /status.json")       // and says what to do instead

	p.Close()
	for _, b := range bodies {
		_, err := io.Copy(io.Discard, b) // the stream ends
		is.NoErr(err)
	}
}

func TestEveryReplicaServesTheSameFleetView(t *testing.T) {
	is := is.New(t)
	s := natstest.Start(t)
	fl := startFleet(t, s.ClientURL(), replica.Config{}, 2)
	// A failure reported to one replica.
	requestTo(t, s.ClientURL(), `{"gl_path":"/azure/dud/","egress_status_code":503}`)
	states := func(addr string) []string {
		var out []string
		for _, p := range snapshot(t, addr).Pools {
			for _, r := range p.Routers {
				until := ""
				if r.Until != nil {
					until = r.Until.Format(time.RFC3339Nano)
				}
				out = append(out, p.Ingress+" "+r.Router+" "+r.State+" "+until+" "+r.Reason+" "+r.By)
			}
		}
		return out
	}
	natstest.Eventually(t, 5*time.Second, func() bool {
		a, b := states(fl.addrs[0]), states(fl.addrs[1])
		return strings.Contains(strings.Join(a, "\n"), "/azure/dud/ disabled") && strings.Join(a, "\n") == strings.Join(b, "\n")
	}, "both replicas' pages show the same disable")
	one, two := snapshot(t, fl.addrs[0]), snapshot(t, fl.addrs[1])
	is.Equal(one.Replica, "replica-1") // each says which replica answered
	is.Equal(two.Replica, "replica-2")
	is.Equal(one.Mode, "ttl")
	is.True(one.NATS.Connected) // and that it is connected
}

func TestThePageShowsNoSecrets(t *testing.T) {
	is := is.New(t)
	const token = "s3cr3t-t0ken"
	s := natstest.Start(t, natstest.WithToken(token))
	// The token in the URL, as gecholog's service bus settings often give it.
	url := strings.Replace(s.ClientURL(), "nats://", "nats://"+token+"@", 1)
	fl := startFleet(t, url, replica.Config{}, 1)
	snap := snapshot(t, fl.addrs[0])
	is.True(snap.NATS.Connected)                             // connected with the token
	is.True(strings.Contains(snap.NATS.Server, "127.0.0.1")) // the server is named
	for _, path := range []string{"/", "/status.js", "/status.json"} {
		_, body := get(t, "http://"+fl.addrs[0]+path)
		is.True(!strings.Contains(body, token)) // and its credentials are not
	}
	client := &http.Client{Timeout: 10 * time.Second} // bounds the reads below
	resp, err := client.Get("http://" + fl.addrs[0] + "/events")
	is.NoErr(err)
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	for {
		line, err := r.ReadString('\n')
		is.NoErr(err)
		if strings.HasPrefix(line, "data: ") {
			says(t, "the event", line, "127.0.0.1") // the server is named
			is.True(!strings.Contains(line, token)) // nor in the event stream
			break
		}
	}
}

func TestThePageListsABoundedFleetThisReplicaAndThoseOutOfStepFirst(t *testing.T) {
	is := is.New(t)
	one := uint64(1)
	f := statuspage.Fleet{Revision: 1, Drift: 1}
	for i := range 100 {
		f.Replicas = append(f.Replicas, statuspage.Replica{ID: fmt.Sprintf("r%03d", i), Revision: &one})
	}
	f.Replicas = append(f.Replicas,
		statuspage.Replica{ID: "zz-forged\u202e", Revision: &one, Refused: "refused revision 2: " + strings.Repeat("x", 5000), Drift: "refused revision 2: " + strings.Repeat("x", 5000)},
		statuspage.Replica{ID: "this", This: true, Revision: &one})
	p, _ := serve(t, source{status: statuspage.Status{ID: "this", Fleet: f}})
	s := p.Snapshot(time.Now())
	is.Equal(len(s.Fleet.Replicas), 64)                 // bounded
	is.Equal(s.Fleet.ReplicasMore, 102-64)              // the rest counted
	is.Equal(s.Fleet.Replicas[0].ID, "this")            // this replica first
	is.Equal(s.Fleet.Replicas[1].ID, `zz-forged\u202e`) // then those out of step, escaped
	is.True(len(s.Fleet.Replicas[1].Drift) < 300)       // and cut
	is.True(strings.HasSuffix(s.Fleet.Replicas[1].Refused, "more bytes]"))
	is.Equal(s.Fleet.Replicas[2].ID, "r000") // then the rest in ID order
}
