// Package broker is the decision core of the gecholog broker: it spreads
// the calls to an ingress router over a pool of routers and takes failing
// routers out of the pool.
//
// A [Broker] is one replica's view. [Broker.Choose] picks the router a call
// goes to, [Broker.Report] hears how a call went, and the failure policy
// ([Policy]) decides from that when a router is disabled, for how long,
// and how it comes back. Which routers are out is shared by every replica
// through a [Store] (the kv package keeps it in a JetStream bucket) and
// mirrored in each replica's memory by [Broker.Observe], so choosing a
// router never waits on the network.
//
// The package knows nothing of NATS, JSON or gecholog's messages: the
// gecholog package reads those and calls in here.
package broker
