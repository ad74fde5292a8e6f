package replica

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Embedded says where an in-process nats-server listens and keeps its
// JetStream files.
type Embedded struct {
	Listen   string // host:port; port 0 is any free port
	StoreDir string
}

// StartEmbedded starts an in-process nats-server with JetStream, so that a
// local gecholog can use it as its service bus and nothing else needs
// installing. It requires token from clients when one is given, like
// gecholog's own, and refuses to listen off loopback without one. The
// caller shuts it down.
func StartEmbedded(e Embedded, token string, log *slog.Logger) (*server.Server, error) {
	host, p, err := net.SplitHostPort(e.Listen)
	if err != nil {
		return nil, fmt.Errorf("embedded-listen %q: %w", e.Listen, err)
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < -1 || port > 65535 {
		return nil, fmt.Errorf("embedded-listen %q: port must be 0 to 65535 (0: any free port)", e.Listen)
	}
	if token == "" && !loopback(host) {
		return nil, fmt.Errorf("embedded-listen %q: off loopback, anyone who reaches the port could write the router health bucket: set NATS_TOKEN, which the embedded nats-server then requires of every client, or listen on 127.0.0.1", e.Listen)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	s, err := server.NewServer(&server.Options{
		ServerName:    "broker-embedded",
		Host:          host,
		Port:          port,
		JetStream:     true,
		StoreDir:      e.StoreDir,
		Authorization: token,
		NoLog:         true,
		NoSigs:        true,
	})
	if err != nil {
		return nil, fmt.Errorf("embedded nats-server: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("embedded nats-server did not start on %s within 10s: is the address in use?", e.Listen)
	}
	log.Info("embedded nats-server with JetStream started",
		slog.String("listen", s.Addr().String()), slog.String("store", e.StoreDir),
		slog.Bool("token_required", token != ""))
	return s, nil
}

// loopback reports whether host is a loopback address or localhost. An
// empty host, 0.0.0.0 and :: listen on every interface; any other name
// may resolve to one that is not loopback.
func loopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}
