// Package peers runs Ferry's benchmark workloads (package bench) on the
// systems Ferry is compared with: NATS JetStream and Centrifugo. Each peer
// implements bench.System with the peer's own client library, and its
// server runs as a child process built from a pinned release, so its CPU
// and memory are measured on their own, as ferryd's are.
//
// The package is a module of its own, so that the main module does not
// depend on the peers' servers and clients. Its command,
// cmd/ferry-bench-peers, runs Ferry and the peers in one run and writes one
// report.
package peers
