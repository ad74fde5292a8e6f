package replica

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/matryer/is"
	"github.com/nats-io/nats.go"
)

func TestReadyzReportsEachStageUntilStopping(t *testing.T) {
	var st progress
	m := newMonitor("replica-1", &st, slog.New(slog.DiscardHandler))
	for _, tc := range []struct {
		stage stage
		code  int
		body  string
	}{
		{notConnected, http.StatusServiceUnavailable, "not connected to NATS\n"},
		{openingStore, http.StatusServiceUnavailable, "opening the router health bucket\n"},
		{loadingView, http.StatusServiceUnavailable, "loading router health\n"},
		{subscribing, http.StatusServiceUnavailable, "subscribing\n"},
		{ready, http.StatusOK, "ok\n"},
		{stopping, http.StatusServiceUnavailable, "stopping\n"},
	} {
		t.Run(strings.TrimSpace(tc.body), func(t *testing.T) {
			is := is.New(t)
			st.advance(tc.stage)
			w := httptest.NewRecorder()
			m.readyz(w, httptest.NewRequest(http.MethodGet, "/readyz", nil))
			is.Equal(w.Code, tc.code)
			is.Equal(w.Body.String(), tc.body)
		})
	}
}

func TestWithoutMetricsAddrTheHandlerIsNotWrapped(t *testing.T) {
	is := is.New(t)
	var m *monitor // what Run has when MetricsAddr is empty
	called := 0
	h := func(*nats.Msg) { called++ }
	wrapped := m.timed(h)
	wrapped(&nats.Msg{})
	is.Equal(called, 1)
	is.Equal(fmt.Sprintf("%p", wrapped), fmt.Sprintf("%p", h)) // the same function: no clock read, no observation
}

func TestTimingACallAllocatesNothing(t *testing.T) {
	is := is.New(t)
	m := newMonitor("replica-1", new(progress), slog.New(slog.DiscardHandler))
	h := m.timed(func(*nats.Msg) {})
	msg := &nats.Msg{}
	is.Equal(testing.AllocsPerRun(1000, func() { h(msg) }), 0.0) // the request path pays a clock read and atomic adds only
}

// A replica that started in local mode attaches to the bucket while it
// serves, and loads the view again: it stays ready meanwhile.
func TestAStageOnlyMovesForward(t *testing.T) {
	is := is.New(t)
	var st progress
	is.Equal(st.advance(ready), notConnected) // the stage it was at
	is.Equal(st.advance(loadingView), ready)  // a stage passed already...
	is.Equal(st.load(), ready)                // ...leaves it where it is
	is.Equal(st.advance(stopping), ready)
	is.Equal(st.load(), stopping)
}
