//go:build go1.27 && !http2legacy

package server

import "errors"

// errXNet refuses H2CXNet: built with Go 1.27 or later, x/net/http2 serves
// HTTP/2 through net/http's own server, and HTTPServer's graceful shutdown
// (a GOAWAY to every h2c connection, then waiting for their streams) does
// not reach the connections it serves. Shutdown would wait out its context
// and Close cut every stream.
var errXNet = errors.New("x/net's h2c server needs a build with -tags http2legacy on Go 1.27 and later (go build -tags http2legacy ./cmd/ferryd); without it x/net serves through net/http's server, which Ferry cannot shut down gracefully. Or use ferry, the default")
