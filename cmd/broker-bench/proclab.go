package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/standin"
	"github.com/gecholog/broker/kv"
	"github.com/gecholog/broker/replica"
)

// A lab of replica processes: the broker binary, as deployed, its pools in
// the fleet's configuration, driven by callers that each have a NATS
// connection of their own, as gecholog's gateways have.
type procLab struct {
	bin       string
	removeBin func()
	procs     []*brokerProc
	stop      func()
	gws       []standin.Gateway // one per caller
	next      atomic.Uint64
}

// startProcLab is startLab with the bench's -replicas as processes and
// callers gateways, each on its own connection.
func (b *bench) startProcLab(ctx context.Context, pools []broker.Pool, llms map[string]*standin.LLM, callers int) (*lab, error) {
	l := &lab{ups: &standin.Upstreams{}, llms: llms, client: standin.NewClient(30 * time.Second), p: &procLab{}}
	fail := func(err error) (*lab, error) {
		l.close()
		return nil, err
	}
	for router, llm := range llms {
		if err := l.ups.Add(router, llm); err != nil {
			return fail(err)
		}
	}
	var err error
	if l.p.bin, l.p.removeBin, err = b.brokerBinary(ctx); err != nil {
		return fail(err)
	}
	if l.nc, err = b.connect(); err != nil {
		return fail(err)
	}
	js, err := jetstream.New(l.nc)
	if err != nil {
		return fail(err)
	}
	cs, err := kv.OpenConfig(ctx, js, kv.ConfigBucket(b.bucket), true)
	if err != nil {
		return fail(err)
	}
	if _, _, err := (configWriter{cs}).write(ctx, pools); err != nil {
		return fail(fmt.Errorf("write the fleet's configuration: %w", err))
	}
	if l.p.procs, l.p.stop, err = b.startProcs(ctx, l.p.bin, b.o.replicas); err != nil {
		return fail(err)
	}
	conns, closeConns, err := b.connectN(callers)
	if err != nil {
		return fail(err)
	}
	l.closeConns = closeConns
	for _, c := range conns {
		l.p.gws = append(l.p.gws, standin.Gateway{NC: c, Subject: b.subject, Upstreams: l.ups.URLs, Client: l.client,
			Logger: b.loggerSubject(), Timeout: labTimeout(b.o.timeout), Payload: 1024})
	}
	l.gw = l.p.gws[0]
	fmt.Fprintf(b.out, "%d replica processes of the broker binary (%s), their pools in the fleet's configuration. %d callers, each with a\n"+
		"NATS connection of its own, make each call as gecholog does (request context, upstream call, response context with\n"+
		"inbound_headers, then the transaction on %s); each waits up to %v for a processor call.\n",
		b.o.replicas, l.p.bin, callers, b.loggerSubject(), l.gw.Timeout)
	return l, nil
}

// answer makes every caller's upstream answers by f.
func (p *procLab) answer(f func(standin.Result) json.RawMessage) {
	for i := range p.gws {
		p.gws[i].Answer = f
	}
}

// do makes one call on the next caller's gateway.
func (p *procLab) do(ctx context.Context, ingress string) (standin.Result, error) {
	return p.gws[p.next.Add(1)%uint64(len(p.gws))].Do(ctx, ingress)
}

// restart stops every replica process, each writing what it counted, then
// starts as many anew.
func (p *procLab) restart(ctx context.Context, b *bench) error {
	p.stop()
	var err error
	p.procs, p.stop, err = b.startProcs(ctx, p.bin, len(p.procs))
	if err != nil {
		p.stop = func() {}
	}
	return err
}

// close stops the replica processes and removes their binary.
func (p *procLab) close() {
	if p.stop != nil {
		p.stop()
	}
	if p.removeBin != nil {
		p.removeBin()
	}
}

// explainWhy is the first replica's one line on why ingress's calls go
// where they go: from its memory, or from its listener's /explain.
func (l *lab) explainWhy(ctx context.Context, ingress string) (string, error) {
	if l.p == nil {
		e, ok := l.f.Replicas[0].Broker().Explain(ingress, time.Now())
		if !ok {
			return "", fmt.Errorf("no pool %s", ingress)
		}
		return e.Why, nil
	}
	body, err := l.p.procs[0].get(ctx, l.client, "/explain?ingress="+url.QueryEscape(ingress))
	if err != nil {
		return "", err
	}
	var x replica.Explained
	if err := json.Unmarshal(body, &x); err != nil {
		return "", err
	}
	if x.Error != "" {
		return "", errors.New(x.Error)
	}
	return x.Why, nil
}

// get reads path from the replica's listener, up to maxMetricsBody.
func (p *brokerProc) get(ctx context.Context, client *http.Client, path string) ([]byte, error) {
	p.mu.Lock()
	addr := p.addr
	p.mu.Unlock()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(io.LimitReader(resp.Body, maxMetricsBody))
}

// metric reads the value of the series name{labels} (labels as the
// exposition writes them, sorted) from the replica's /metrics; ok is
// false when it has none.
func (p *brokerProc) metric(ctx context.Context, client *http.Client, series string) (v float64, ok bool, err error) {
	body, err := p.get(ctx, client, "/metrics")
	if err != nil {
		return 0, false, err
	}
	for line := range bytes.Lines(body) {
		if rest, found := bytes.CutPrefix(line, []byte(series+" ")); found {
			v, err := strconv.ParseFloat(string(bytes.TrimSpace(rest)), 64)
			return v, err == nil, err
		}
	}
	return 0, false, nil
}
