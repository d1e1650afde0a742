// Package verify checks the deployment files of trm-live against the code
// and runs the workers on a real three-node NATS cluster.
//
// Its tests (imported workers appear in _test.go files only) prove that:
// the compose files set only settings the workers read and every one they
// need, the Traefik labels match the path map of docs/DEPLOY.md, every file
// a compose file names exists, the NATS configuration parses and grants
// each worker exactly what it uses; and, on three nats-server nodes with
// cluster routes on loopback, the pipeline loses nothing when a node dies
// and comes back.
//
// The package itself exports StartCluster, which the cluster tests and
// the cluster benchmark (e2e/bench/cluster) share.
package verify
