// Package statuspage serves a replica's live status page: every pool and
// router with the state the replica acts on, why and until when, who wrote
// it and the share of this replica's recent choices, updated in the
// browser once a second or sooner, over server-sent events.
//
// The page is one HTML file with a style sheet and a small script, embedded
// in the binary: no framework, no build step. It is read-only, because the
// listener it is served on has no authentication; disabling and enabling
// stay with the operator's commands and their NATS credentials. It shows no
// secrets: the NATS server's address is shown without its credentials.
//
// Every replica serves the same fleet view: each mirrors the shared bucket,
// so the pages of all replicas converge on the same router health. What a
// replica cannot know (the bucket while NATS is down, the records of
// routers no pool has) the page says in words instead of guessing.
package statuspage
