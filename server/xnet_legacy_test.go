//go:build !go1.27 || http2legacy

package server_test

import (
	"testing"

	"github.com/ferrysync/ferry/server"
)

// Built with Go 1.26, or with -tags http2legacy, xnet serves.
func TestXNetServesOnItsOwnServer(t *testing.T) {
	if server.ErrXNet != nil {
		t.Fatalf("H2CXNet refused in a build where x/net serves with its own server: %v", server.ErrXNet)
	}
}
