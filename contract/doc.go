// Package contract is the wire contract of trm-live: the position object and
// its codec, the Redis-entry parser with its rejection reasons, NATS subject
// names and Nats-Msg-Id, and the names of the JetStream streams.
//
// It imports nothing outside the standard library. Stream configurations,
// which need nats.go, live in the streams subpackage; authsvc's request and
// response types and its client live in the auth subpackage; the workers'
// NATS connection options in natsconn, their probe HTTP server in probe.
package contract
