//go:build go1.27 && !http2legacy

package server

// Built with Go 1.27 or later, golang.org/x/net/http2 serves HTTP/2 through
// net/http's own server, and HTTPServer.goAway no longer reaches the h2c
// connections it serves: Shutdown would send them no GOAWAY and wait out its
// context. Build with -tags http2legacy (x/net's own server, as with Go
// 1.26), or give HTTPServer another way to shut them down gracefully.
var _ = HTTPServer_goAway_needs_porting_to_Go_1_27
