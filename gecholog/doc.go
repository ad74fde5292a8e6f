// Package gecholog is the gecholog gateway's side of the broker: the
// processor messages gecholog sends and the answers it reads, the
// upstream's headers it passes on, and its gl_config.json.
//
// gecholog calls a processor with a NATS request holding a JSON object of
// the transaction fields the processor asked for (see GECHOLOG.md in the
// project's shared notes). [Parse] reads the broker's two messages without
// allocating, [Handler] answers them with a broker's decisions, and
// [CheckGLConfig] says whether a gl_config.json routes pools through the
// broker.
//
// gecholog also publishes every finished call, whole, on its logger
// subject. [ParseTransaction] reads the few fields the broker needs from
// one (the router, the upstream's time, its headers) without decoding the
// prompt or the completion, and [RateLimits] reads OpenAI's, Azure
// OpenAI's and Anthropic's rate-limit headers from those headers.
package gecholog

// EnableJetStream is the fix to name when the service bus has no
// JetStream, as gecholog's stock nats-server.conf has none.
const EnableJetStream = `add "jetstream { store_dir: /app/working/jetstream }" to gecholog's /app/conf/nats-server.conf (this repository's nats-server.conf does) and restart gecholog`
