package server

import (
	"net"
	"syscall"
	"time"
)

// userTimeout reads TCP_USER_TIMEOUT back.
func userTimeout(c *net.TCPConn) (time.Duration, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var ms int
	var serr error
	err = raw.Control(func(fd uintptr) {
		ms, serr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpUserTimeout)
	})
	if err != nil {
		return 0, err
	}
	return time.Duration(ms) * time.Millisecond, serr
}
