// Package server adapts Ferry's wire contract (package ferry.v1, served with
// Connect) to the engine. It holds no storage code: every read and write
// goes through the engine, which enforces membership and durability.
//
// One port serves the Connect, gRPC and gRPC-Web protocols, over HTTP/1.1
// and HTTP/2 (h2c without TLS), with zstd and gzip compression negotiated
// per call. Serve it with HTTPServer, which serves h2c connections without
// the HTTP/1 buffers net/http would keep for each.
//
// # Security
//
// An interceptor checks the bearer token before any request body is read,
// decompressed or decoded; only Register and Login go without one. Handlers
// pass the authenticated engine.Actor to the engine explicitly. Every error
// a client sees is a Connect code with a message written for them: the
// engine's errors map to codes (ErrNotFound to not_found, ErrForbidden to
// permission_denied, ErrTooMany to resource_exhausted, ...); internal
// errors become Internal with no detail, and are logged.
//
// # Metrics
//
// Server.Metrics returns the server's counters, and Server.MetricsHandler
// serves them in Prometheus's text format with the engine's and the Go
// runtime's. They are atomics bumped where things happen (a few per
// message sent), read only when asked.
//
// # Concurrency
//
// A Server is safe for concurrent use. A Sync session's handler goroutine
// reads the client's messages; what the session sends (catch-up, live ops,
// push results, heartbeats) goes out from its pump, which runs, one at a
// time, on a pooled goroutine whose stack has grown (see deep and pumper)
// while there is something to send; only it calls Send. A Subscribe
// session's handler is its sender.
package server
