package replica

import (
	"testing"

	"github.com/matryer/is"
)

func TestOnlyLoopbackAddressesAndLocalhostAreLoopback(t *testing.T) {
	for host, want := range map[string]bool{
		"127.0.0.1": true, "127.8.9.10": true, "::1": true, "::ffff:127.0.0.1": true, "localhost": true, "LocalHost": true,
		"": false, "0.0.0.0": false, "::": false, "10.0.0.1": false, "192.168.1.2": false, "fe80::1": false,
		"nats.example.com": false, "localhost.example.com": false, "127.0.0.1.nip.io": false,
	} {
		is.New(t).Equal(loopback(host), want) // host
	}
}
