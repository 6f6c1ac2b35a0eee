package server

import (
	"net"
	"time"
)

// DeadPeerListener returns ln, except that the kernel closes each of its
// TCP connections once data sent on it has waited timeout for the peer's
// acknowledgement (Linux's TCP_USER_TIMEOUT; elsewhere ln as it is). A
// device whose network died mid-session otherwise keeps its connection,
// and with it one of its sync sessions' slots (Options.MaxStreamsPerDevice),
// until TCP gives up retransmitting, some 15 minutes: heartbeats land in
// the socket's buffer, so no write ever blocks for the send timeout.
// HTTP/2 finds such a peer with its pings; HTTP/1.1 (browsers over plain
// http, and many proxies) has nothing else.
func DeadPeerListener(ln net.Listener, timeout time.Duration) net.Listener {
	if timeout <= 0 || !userTimeoutSupported {
		return ln
	}
	return deadPeerListener{ln, timeout}
}

type deadPeerListener struct {
	net.Listener
	timeout time.Duration
}

func (l deadPeerListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = setUserTimeout(tc, l.timeout) // best effort: the connection works without
	}
	return c, err
}
