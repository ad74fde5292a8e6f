package main

import (
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// startEmbedded starts an in-process nats-server with JetStream, so that a
// local gecholog can use it as its service bus and nothing else needs
// installing. It requires NATS_TOKEN when one is set, like gecholog's own.
func startEmbedded(c config, log *slog.Logger) (*server.Server, error) {
	host, p, err := net.SplitHostPort(c.embeddedListen)
	if err != nil {
		return nil, fmt.Errorf("embedded-listen %q: %w", c.embeddedListen, err)
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < -1 || port > 65535 {
		return nil, fmt.Errorf("embedded-listen %q: port must be 0 to 65535 (0: any free port)", c.embeddedListen)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	s, err := server.NewServer(&server.Options{
		ServerName:    "broker-embedded",
		Host:          host,
		Port:          port,
		JetStream:     true,
		StoreDir:      c.embeddedStore,
		Authorization: c.token,
		NoLog:         true,
		NoSigs:        true,
	})
	if err != nil {
		return nil, fmt.Errorf("embedded nats-server: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("embedded nats-server did not start on %s within 10s: is the address in use?", c.embeddedListen)
	}
	log.Info("embedded nats-server with JetStream started",
		slog.String("listen", s.Addr().String()), slog.String("store", c.embeddedStore),
		slog.Bool("token_required", c.token != ""))
	return s, nil
}
