// Package kv keeps router health in a NATS JetStream key-value bucket that
// every broker replica shares: it implements broker.Store.
//
// A key is a router path such as "/azure/dud/"; its value is a
// broker.Record in a JSON form a person can read with `nats kv get`. A key
// exists only while the router is out, so `nats kv ls BUCKET` lists exactly
// those routers.
//
// Servers with per-message TTL (nats-server 2.11 and later) expire a key by
// themselves and tell every watcher with a purge marker ([ModeTTL]). Older
// servers, such as the 2.10 line the gecholog container bundles, ignore a TTL
// silently, so there every replica enforces the record's Until itself and a
// janitor deletes expired keys ([ModeExpiry]). [Open] detects which from the
// server and the bucket, never from a failed write.
//
// The package knows JetStream and how records are kept, and nothing of
// gecholog.
package kv
