package standin_test

import (
	"io"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/matryer/is"
	"go.uber.org/goleak"

	"github.com/gecholog/broker/internal/standin"
	"github.com/gecholog/broker/internal/testutil/natstest"
)

// TestMain fails the package when a server or connection of a test
// outlives it.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// serve serves h on loopback for the test and returns its URL and a client
// that is closed with it.
func serve(t *testing.T, h http.Handler) (string, *http.Client) {
	t.Helper()
	u := &standin.Upstreams{}
	url, err := u.Serve(h)
	if err != nil {
		t.Fatal(err)
	}
	c := standin.NewClient(10 * time.Second)
	t.Cleanup(func() { c.CloseIdleConnections(); u.Close() })
	return url, c
}

func post(t *testing.T, c *http.Client, url string) *http.Response {
	t.Helper()
	resp, err := c.Post(url, "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

func TestQuotaIsAnsweredHonestlyAndThen429WithRetryAfter(t *testing.T) {
	is := is.New(t)
	llm := &standin.LLM{Quota: 3, Window: time.Hour}
	url, c := serve(t, llm)
	for left := 2; left >= 0; left-- {
		resp := post(t, c, url)
		is.Equal(resp.StatusCode, 200)
		is.Equal(resp.Header.Get("X-Ratelimit-Limit-Requests"), "3")
		is.Equal(resp.Header.Get("X-Ratelimit-Remaining-Requests"), strconv.Itoa(left)) // what is left once this call took its share
		reset, err := time.ParseDuration(resp.Header.Get("X-Ratelimit-Reset-Requests"))
		is.NoErr(err)                                         // a Go-like duration
		is.True(reset > 59*time.Minute && reset <= time.Hour) // until the window resets
		is.Equal(resp.Header.Get("Retry-After"), "")          // only on a 429
	}
	resp := post(t, c, url)
	is.Equal(resp.StatusCode, http.StatusTooManyRequests)
	is.Equal(resp.Header.Get("X-Ratelimit-Remaining-Requests"), "0")
	secs, err := strconv.Atoi(resp.Header.Get("Retry-After"))
	is.NoErr(err)                        // whole seconds
	is.True(secs > 3540 && secs <= 3600) // rounded up: waiting that long finds the quota reset
	is.Equal(llm.Served(), int64(3))
	is.Equal(llm.Limited(), int64(1))
	ws := llm.Windows()
	is.Equal(len(ws), 1)
	is.Equal(ws[0].Served, 3)
	is.Equal(ws[0].Limited, 1)
}

func TestQuotaWindowsFollowTheEpochAndResetInWholeSeconds(t *testing.T) {
	is := is.New(t)
	// The window began 1.7 s ago and resets 0.3 s from now: Retry-After
	// rounds up to 1.
	llm := &standin.LLM{Quota: 1, Window: 2 * time.Second, Epoch: time.Now().Add(-41*time.Second - 700*time.Millisecond)}
	url, c := serve(t, llm)
	is.Equal(post(t, c, url).StatusCode, 200)
	resp := post(t, c, url)
	is.Equal(resp.StatusCode, http.StatusTooManyRequests)
	is.Equal(resp.Header.Get("Retry-After"), "1")
	reset, err := time.ParseDuration(resp.Header.Get("X-Ratelimit-Reset-Requests"))
	is.NoErr(err)
	is.True(reset > 0 && reset <= 300*time.Millisecond) // "300ms" or less, as OpenAI writes it
	ws := llm.Windows()
	is.Equal(len(ws), 1)
	is.True(ws[0].Start.Before(time.Now().Add(-time.Second))) // the window holding now, from the epoch
}

func TestALazyWindowOpensWithTheFirstCallAfterTheLastEnded(t *testing.T) {
	is := is.New(t)
	// An epoch long past, which a lazy deployment ignores: its window
	// opens with its first call, and lasts the whole window from there.
	llm := &standin.LLM{Quota: 1, Window: time.Second, Lazy: true, Epoch: time.Now().Add(-time.Hour - 900*time.Millisecond)}
	url, c := serve(t, llm)
	first := time.Now()
	is.Equal(post(t, c, url).StatusCode, 200)
	resp := post(t, c, url)
	is.Equal(resp.StatusCode, http.StatusTooManyRequests)
	reset, err := time.ParseDuration(resp.Header.Get("X-Ratelimit-Reset-Requests"))
	is.NoErr(err)
	is.True(reset > 500*time.Millisecond) // a whole window from the first call, not what the epoch leaves
	// Idle past the window's end: the next call opens a new window at its
	// own arrival, not at the end of the last.
	for time.Since(first) < 1500*time.Millisecond {
		<-time.After(1500*time.Millisecond - time.Since(first)) // the window and half of one more, a fixed span the test sets itself
	}
	reopened := time.Now()
	resp = post(t, c, url)
	is.Equal(resp.StatusCode, 200)
	reset, err = time.ParseDuration(resp.Header.Get("X-Ratelimit-Reset-Requests"))
	is.NoErr(err)
	is.True(reset > 800*time.Millisecond) // a fixed window from the first would have reset 0.5 s after this call
	ws := llm.Windows()
	is.Equal(len(ws), 2)
	is.True(!ws[1].Start.Before(reopened)) // the second window starts with the call that opened it
	is.Equal(ws[0].Served, 1)
	is.Equal(ws[0].Limited, 1)
}

func TestCallsBeyondTheConcurrencyLimitWaitForASlot(t *testing.T) {
	is := is.New(t)
	release := make(chan struct{})
	var started sync.WaitGroup
	started.Add(1)
	served := 0
	llm := &standin.LLM{Concurrency: 1, Latency: func() time.Duration {
		served++ // only ever one at a time: the race detector would say
		if served == 1 {
			started.Done()
			<-release // the first call holds the only slot
		}
		return 0
	}}
	url, c := serve(t, llm)
	var calls sync.WaitGroup
	statuses := make([]int, 2)
	calls.Go(func() { statuses[0] = post(t, c, url).StatusCode })
	started.Wait()
	calls.Go(func() { statuses[1] = post(t, c, url).StatusCode })
	natstest.Eventually(t, 10*time.Second, func() bool { return llm.InProgress() == 2 }, "the second call arrived") // and waits, counted as held
	is.Equal(served, 1)                                                                                             // and is not served meanwhile
	close(release)
	calls.Wait()
	is.Equal(statuses, []int{200, 200}) // waiting is not refusing
	is.Equal(llm.InProgress(), int64(0))
}
