//go:build !go1.27 || http2legacy

package server

// errXNet is nil: built with Go 1.26, or with -tags http2legacy, x/net/http2
// serves h2c with its own server, which HTTPServer shuts down gracefully.
var errXNet error
