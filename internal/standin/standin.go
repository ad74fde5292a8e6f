// Package standin stands in for the gecholog gateway: it makes a
// client call the way gecholog does, with the broker's two processor calls
// around the call to the chosen router's upstream, and serves upstreams
// on loopback. The demo and the tests drive replicas with it.
package standin

import (
	"fmt"
	"net"
	"net/http"
)

// Upstreams are LLM APIs on loopback, by router; the zero value has none.
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

// Add serves h on a loopback port until Close as router's upstream.
func (u *Upstreams) Add(router string, h http.Handler) error {
	url, err := u.Serve(h)
	if err != nil {
		return err
	}
	if u.URLs == nil {
		u.URLs = map[string]string{}
	}
	u.URLs[router] = url
	return nil
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
