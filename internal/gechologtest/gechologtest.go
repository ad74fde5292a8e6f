// Package gechologtest stands in for the gecholog gateway: it makes a
// client call the way gecholog does, with the broker's two processor calls
// around the call to the chosen router's upstream, and serves upstreams
// on loopback. The demo and the tests drive replicas with it.
package gechologtest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"
)

// Gateway makes calls as gecholog does: the request context to the
// broker, the call to the chosen router's upstream, then the response
// context with the status the client got.
type Gateway struct {
	NC        *nats.Conn
	Subject   string            // the broker's service_bus_topic
	Upstreams map[string]string // router → upstream URL
	Client    *http.Client
}

// Call makes one client call to ingress and says which router served it
// and the status the client got.
func (g Gateway) Call(ingress string) (router string, status int, err error) {
	msg, err := g.NC.Request(g.Subject, fmt.Appendf(nil, `{"gl_path":%q}`, ingress), 2*time.Second)
	if err != nil {
		return "", 0, fmt.Errorf("request context: %w", err)
	}
	router = ingress
	if len(msg.Data) > 0 {
		var r struct {
			GLPath string `json:"gl_path"`
		}
		if err := json.Unmarshal(msg.Data, &r); err != nil {
			return "", 0, fmt.Errorf("broker reply %q: %w", msg.Data, err)
		}
		router = r.GLPath
	}
	status = http.StatusBadGateway // gecholog's answer when the connection is refused
	if resp, err := g.Client.Post(g.Upstreams[router], "application/json", bytes.NewReader([]byte(`{"messages":[]}`))); err == nil {
		status = resp.StatusCode
		resp.Body.Close()
	}
	if _, err := g.NC.Request(g.Subject, fmt.Appendf(nil, `{"gl_path":%q,"egress_status_code":%d}`, router, status), 2*time.Second); err != nil {
		return "", 0, fmt.Errorf("response context: %w", err)
	}
	return router, status, nil
}

// Upstreams are LLM APIs on loopback for the default pool.
type Upstreams struct {
	URLs    map[string]string // router → upstream URL
	servers []*http.Server
	done    []chan struct{}
}

// StartUpstreams serves gpt4 and gpt35turbo on loopback and gives the dud
// (and the ingress, which a broker that answers never needs) the address
// of a closed port, where connections are refused.
func StartUpstreams() (*Upstreams, error) {
	u := &Upstreams{URLs: map[string]string{}}
	for router, model := range map[string]string{"/azure/gpt4/": "gpt-4", "/azure/gpt35turbo/": "gpt-35-turbo"} {
		body := fmt.Appendf(nil, `{"object":"chat.completion","model":%q}`, model)
		url, err := u.Serve(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(body)
		}))
		if err != nil {
			u.Close()
			return nil, err
		}
		u.URLs[router] = url
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		u.Close()
		return nil, err
	}
	dead := "http://" + l.Addr().String() + "/"
	l.Close()
	u.URLs["/azure/dud/"], u.URLs["/azure/"] = dead, dead
	return u, nil
}

// Serve serves h on a loopback port until Close and returns its URL.
func (u *Upstreams) Serve(h http.Handler) (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	s := &http.Server{Handler: h}
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Serve(l) }()
	u.servers = append(u.servers, s)
	u.done = append(u.done, done)
	return "http://" + l.Addr().String() + "/", nil
}

// Close stops every upstream and waits for them.
func (u *Upstreams) Close() {
	for _, s := range u.servers {
		s.Close()
	}
	for _, d := range u.done {
		<-d
	}
}
