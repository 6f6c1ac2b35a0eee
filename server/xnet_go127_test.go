//go:build go1.27 && !http2legacy

package server_test

import (
	"testing"

	"github.com/ferrysync/ferry/server"
)

// Built with Go 1.27 or later and without the tag, xnet is refused.
func TestXNetRefusedOnGo127(t *testing.T) {
	if server.ErrXNet == nil {
		t.Fatal("a Go 1.27 build without -tags http2legacy serves H2CXNet, whose connections Shutdown cannot reach")
	}
}
