package ops

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Healthcheck asks the replica whose metrics listener is on addr whether
// it is ready, for container healthchecks in an image without a shell or
// curl: it prints "ready", or fails with the replica's reason.
func Healthcheck(ctx context.Context, addr string, stdout io.Writer) error {
	if addr == "" {
		return errors.New("metrics-addr: not set; the replica serves /readyz only when BROKER_METRICS_ADDR is set (e.g. :9090)")
	}
	u, err := readyzURL(addr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	resp, err := getOnce(ctx, addr, u)
	if err != nil {
		return fmt.Errorf("%s: %w", u, err)
	}
	defer resp.Body.Close()
	line, _ := bufio.NewReader(io.LimitReader(resp.Body, 512)).ReadString('\n')
	line = strings.TrimSpace(line)
	if resp.StatusCode != http.StatusOK {
		if line == "" {
			line = resp.Status
		}
		return fmt.Errorf("%s: not ready: %s", u, line)
	}
	fmt.Fprintln(stdout, "ready")
	return nil
}

// readyzURL turns a listen address into the URL of its /readyz.
func readyzURL(addr string) (string, error) {
	base, err := listenerURL(addr)
	if err != nil {
		return "", err
	}
	return base + "/readyz", nil
}

// listenerURL turns a listen address into the URL to ask: a listener on
// every interface (":9090", "0.0.0.0:9090", "[::]:9090") is asked on
// loopback.
func listenerURL(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("metrics-addr %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port), nil
}

// getOnce asks the replica's listener at addr for u once. A request that
// cannot be made (a URL no listener can have) names the setting; a
// failed one is the transport's error.
func getOnce(ctx context.Context, addr, u string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("metrics-addr %q: %w", addr, err)
	}
	// No proxy and no kept connections: this process asks once and exits.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, err
	}
	return resp, nil
}
