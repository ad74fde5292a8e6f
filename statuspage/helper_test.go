package statuspage_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/internal/natsconn"
	"github.com/gecholog/broker/internal/testutil/natstest"
	"github.com/gecholog/broker/kv"
	"github.com/gecholog/broker/ops"
	"github.com/gecholog/broker/replica"
	"github.com/gecholog/broker/statuspage"
)

// The harness the statuspage tests share: replicas in this process whose
// pages they read, a headless Chromium to read them with, a page on a
// source the test sets, and the bucket written past the KV API.

// says fails the test unless got, what the page shows as where, holds
// want, and shows what it holds when it does not.
func says(t *testing.T, where, got, want string) {
	t.Helper()
	if !strings.Contains(got, want) {
		t.Fatalf("%s does not say %q; it says:\n%s", where, want, got)
	}
}

// syncBuffer is a buffer safe for the goroutines that write to it.
type syncBuffer = natstest.Buffer

// fleet is replicas running in this process, each with its listener on a
// loopback port of its own.
type fleet struct {
	t     *testing.T
	f     *replica.Fleet
	addrs []string // each replica's listener, host:port
	logs  []*syncBuffer
}

// startFleet runs n replicas of base against natsURL, with their metrics
// listeners on free loopback ports, and waits until they serve. They stop
// when the test ends (before the server), or at stop; when the test fails,
// their logs are shown.
func startFleet(t *testing.T, natsURL string, base replica.Config, n int) *fleet {
	t.Helper()
	base.NATS = natsconn.Settings{Servers: natsURL}
	base.MetricsAddr = "127.0.0.1:0"
	fl := &fleet{t: t}
	logs := map[string]*syncBuffer{}
	for i := range n {
		l := &syncBuffer{}
		logs[fmt.Sprintf("replica-%d", i+1)] = l
		fl.logs = append(fl.logs, l)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for i, l := range fl.logs {
				t.Logf("replica-%d logged:\n%s", i+1, l)
			}
		}
	})
	f, err := replica.StartFleet(context.Background(), base, n, func(id string) *slog.Logger {
		return slog.New(slog.NewJSONHandler(logs[id], nil))
	})
	if err != nil {
		t.Fatal(err)
	}
	fl.f = f
	t.Cleanup(fl.stop)
	for _, l := range fl.logs {
		fl.addrs = append(fl.addrs, listening(t, l))
	}
	return fl
}

// stop stops every replica and waits for them; again does nothing.
func (fl *fleet) stop() {
	if fl.f == nil {
		return
	}
	f := fl.f
	fl.f = nil
	if err := f.Stop(); err != nil {
		fl.t.Errorf("replicas stopped with: %v", err)
	}
}

// listening is the address a replica's log says its listener has.
func listening(t *testing.T, log *syncBuffer) string {
	t.Helper()
	sc := bufio.NewScanner(strings.NewReader(log.String()))
	for sc.Scan() {
		var l struct{ Msg, Addr string }
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "metrics listening" {
			return l.Addr
		}
	}
	t.Fatal("the replica logged no listener address")
	return ""
}

// snapshot reads /status.json from the listener at addr.
func snapshot(t *testing.T, addr string) statuspage.Snapshot {
	t.Helper()
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + addr + "/status.json")
	if err != nil {
		t.Fatalf("GET /status.json: %v", err)
	}
	defer resp.Body.Close()
	var s statuspage.Snapshot
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatalf("decode /status.json: %v", err)
	}
	return s
}

// target is what the operator's commands act on: the bucket the replicas
// share on natsURL.
func target(natsURL string, base replica.Config) ops.Target {
	pools := base.Pools
	if pools == nil {
		pools = broker.DefaultPools()
	}
	return ops.Target{NATS: natsconn.Settings{Servers: natsURL}, Bucket: replica.DefaultBucket, Pools: pools}
}

func opsEnv(string) string { return "" }

// chromium finds a browser to drive: $BROKER_CHROMIUM, else Debian's
// chromium (what .ci/run installs), chromium-browser or google-chrome on
// the PATH; "" when there is none.
func chromium() string {
	if p := os.Getenv("BROKER_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// startBrowser starts a headless Chromium for the test, with an empty
// profile and the flags this machine's closed network needs (without
// them Chromium tries Google's hosts at every start), and closes it when
// the test ends. Without Chromium the test is skipped, saying so: the
// browser tests are the only ones that need it. A Chromium that is there
// and does not start fails the test.
func startBrowser(t *testing.T, width, height int) context.Context {
	t.Helper()
	path := chromium()
	if path == "" {
		t.Skip("SKIPPED, NOT TESTED IN A BROWSER: no Chromium found (apt-get install chromium, or set BROKER_CHROMIUM to one); .ci/run installs it")
	}
	var out syncBuffer
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox, // as root, as CI runs; the page is our own
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.NoFirstRun,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(width, height),
		chromedp.CombinedOutput(&out),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancel()
		cancelAlloc() // waits for the browser process to end
		if t.Failed() {
			t.Logf("chromium printed:\n%s", out.String())
		}
	})
	start := time.Now()
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		t.Fatalf("start %s: %v\n%s", path, err, out.String())
	}
	t.Logf("chromium started in %v", time.Since(start).Round(time.Millisecond))
	return ctx
}

// open navigates the browser to the page at addr and waits until it has
// drawn its first snapshot.
func open(t *testing.T, ctx context.Context, addr string) {
	t.Helper()
	if err := chromedp.Do(ctx, chromedp.Navigate("http://"+addr+"/")); err != nil {
		t.Fatalf("open the page: %v", err)
	}
	waitFor(t, ctx, 10*time.Second, `document.getElementById("updated").textContent !== "loading…"`)
}

// waitFor waits up to d for the JavaScript condition cond to hold on the
// open page, and returns how long it took.
func waitFor(t *testing.T, ctx context.Context, d time.Duration, cond string) time.Duration {
	t.Helper()
	start := time.Now()
	_, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](cond, chromedp.WithPollingTimeout(d), chromedp.WithPollingInterval(10*time.Millisecond)))
	if err != nil {
		t.Fatalf("waiting %v for %s: %v\nthe page says:\n%s", d, cond, err, pageText(ctx))
	}
	return time.Since(start)
}

// eval evaluates the JavaScript expression on the open page.
func eval[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// pageText is what the page shows, as text.
func pageText(ctx context.Context) string {
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body.innerText`))
	if err != nil {
		return "(" + err.Error() + ")"
	}
	return s
}

// rowText is the text of router's row in the ingress's pool.
func rowText(t *testing.T, ctx context.Context, ingress, router string) string {
	t.Helper()
	return eval[string](t, ctx, `document.querySelector(`+row(ingress, router)+`).innerText`)
}

// row is a CSS selector, as a JavaScript string, for router's row in the
// ingress's pool.
func row(ingress, router string) string {
	b, _ := json.Marshal(`tbody[data-ingress="` + ingress + `"] tr[data-router="` + router + `"]`)
	return string(b)
}

// screenshot saves the whole page as name.png in the test's temporary
// folder, and at screenshotPath when one is asked for (with suffix before
// .png); it returns the file in the temporary folder.
func screenshot(t *testing.T, ctx context.Context, name, suffix string) string {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	path := filepath.Join(t.TempDir(), name+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)
	if asked := screenshotPath(); asked != "" {
		asked = strings.TrimSuffix(asked, ".png") + suffix + ".png"
		if err := os.MkdirAll(filepath.Dir(asked), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(asked, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot asked for: %s", asked)
	}
	return path
}

// requestTo sends a gecholog processor call to the replicas and returns
// their answer.
func requestTo(t *testing.T, natsURL string, bodies ...string) {
	t.Helper()
	nc := natstest.ConnectURL(t, natsURL)
	defer nc.Close()
	for _, b := range bodies {
		if _, err := nc.Request(replica.DefaultSubject, []byte(b), 5*time.Second); err != nil {
			t.Fatalf("request %s: %v", b, err)
		}
	}
}

// source is a replica as the page sees it, set by the test.
type source struct {
	status statuspage.Status
	broker *broker.Broker
}

func (s source) Status() statuspage.Status { return s.status }

func (s source) Broker() *broker.Broker { return s.broker }

// serve serves the page of src on a loopback test server.
func serve(t *testing.T, src statuspage.Source) (*statuspage.Page, *httptest.Server) {
	t.Helper()
	p := statuspage.New(src)
	mux := http.NewServeMux()
	p.Register(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(func() { p.Close(); srv.Close() })
	return p, srv
}

// get answers a GET of url, its body read whole.
func get(t *testing.T, url string) (*http.Response, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp, string(b)
}

// openBucket opens the replicas' bucket, creating it, for the test to write.
func openBucket(t *testing.T, js jetstream.JetStream) *kv.Store {
	t.Helper()
	st, err := kv.Open(context.Background(), js, kv.Config{Bucket: replica.DefaultBucket})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return st
}

// rawKey publishes value straight to the bucket's subject for key, past the
// KV API and its check of the key's characters.
func rawKey(t *testing.T, js jetstream.JetStream, key, value string) {
	t.Helper()
	if _, err := js.Publish(context.Background(), "$KV."+replica.DefaultBucket+"."+key, []byte(value)); err != nil {
		t.Fatalf("publish %q: %v", key, err)
	}
}

// findRouter is router as the snapshot shows it in the first pool that
// has it; the zero Router when none does.
func findRouter(s statuspage.Snapshot, router string) statuspage.Router {
	for _, p := range s.Pools {
		for _, r := range p.Routers {
			if r.Router == router {
				return r
			}
		}
	}
	return statuspage.Router{}
}

// events reads server-sent events from the page's stream at addr and
// sends each, whole, until ctx ends.
func events(t *testing.T, ctx context.Context, addr string) <-chan string {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET /events: %v", err)
	}
	out := make(chan string)
	go func() {
		defer resp.Body.Close()
		defer close(out)
		r := bufio.NewReader(resp.Body)
		var ev strings.Builder
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			ev.WriteString(line)
			if line == "\n" {
				select {
				case out <- ev.String():
				case <-ctx.Done():
					return
				}
				ev.Reset()
			}
		}
	}()
	return out
}

// startReplica runs one replica of c, named id, against natsURL, with its
// listener on a free loopback port, and returns the listener's address
// once it serves. It stops when the test ends, before the server.
func startReplica(t *testing.T, natsURL, id string, c replica.Config) string {
	t.Helper()
	c.ID, c.NATS, c.MetricsAddr = id, natsconn.Settings{Servers: natsURL}, "127.0.0.1:0"
	logs := &syncBuffer{}
	c.Logger = slog.New(slog.NewJSONHandler(logs, nil))
	ready := make(chan struct{}, 1)
	c.Ready = func(*replica.Replica) { ready <- struct{}{} }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := replica.Run(ctx, c); err != nil {
			t.Errorf("replica %s: %v", id, err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		if t.Failed() {
			t.Logf("%s logged:\n%s", id, logs)
		}
	})
	select {
	case <-ready:
	case <-done:
		t.Fatalf("replica %s stopped before it served", id)
	case <-time.After(15 * time.Second):
		t.Fatalf("replica %s not serving within 15s", id)
	}
	return listening(t, logs)
}
