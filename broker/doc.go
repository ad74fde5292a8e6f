// Package broker is the gecholog processor that spreads calls to an ingress
// router over a pool of routers and takes failing routers out of the pool.
//
// gecholog calls the broker twice per client call on one NATS subject: in the
// request context with {"gl_path": "/azure/"}, answered with the chosen
// router, and in the response context with the router used and the status
// the client got, answered empty. [Broker.Handle] answers both.
//
// Which routers are disabled is shared by every replica through a [Store]
// (the kv package implements it on a JetStream bucket) and mirrored in each
// replica's memory by [Broker.Observe], so choosing a router never waits on
// the network.
package broker
