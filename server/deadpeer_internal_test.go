package server

import (
	"net"
	"testing"
	"time"
)

// TestDeadPeerListener: the connections it accepts carry the timeout
// (Linux: TCP_USER_TIMEOUT, read back from the socket).
func TestDeadPeerListener(t *testing.T) {
	if !userTimeoutSupported {
		t.Skip("no TCP_USER_TIMEOUT on this system")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dl := DeadPeerListener(ln, 90*time.Second)
	defer dl.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	c, err := dl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, err := userTimeout(c.(*net.TCPConn))
	if err != nil || got != 90*time.Second {
		t.Fatalf("accepted connection's TCP_USER_TIMEOUT %v, %v; want 1m30s", got, err)
	}
	if DeadPeerListener(ln, 0) != ln {
		t.Fatal("a zero timeout wrapped the listener")
	}
}
