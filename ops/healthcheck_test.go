package ops

import (
	"strings"
	"testing"

	"github.com/matryer/is"
)

func TestHealthcheckAsksLoopbackForAListenerOnEveryInterface(t *testing.T) {
	for _, tc := range []struct{ addr, url string }{
		{":9090", "http://127.0.0.1:9090/readyz"},
		{"0.0.0.0:9090", "http://127.0.0.1:9090/readyz"},
		{"[::]:9090", "http://127.0.0.1:9090/readyz"},
		{"127.0.0.1:9091", "http://127.0.0.1:9091/readyz"},
		{"localhost:9090", "http://localhost:9090/readyz"},
		{"[::1]:9090", "http://[::1]:9090/readyz"},
	} {
		t.Run(tc.addr, func(t *testing.T) {
			is := is.New(t)
			u, err := readyzURL(tc.addr)
			is.NoErr(err)
			is.Equal(u, tc.url)
		})
	}
	_, err := readyzURL("9090")
	if err == nil || !strings.Contains(err.Error(), "metrics-addr") {
		t.Fatalf("a bare port: got %v, want an error naming metrics-addr", err)
	}
}
