package server

import (
	"net"
	"syscall"
	"time"
)

const userTimeoutSupported = true

// tcpUserTimeout is Linux's TCP_USER_TIMEOUT option (linux/tcp.h), which
// package syscall does not name.
const tcpUserTimeout = 0x12

func setUserTimeout(c *net.TCPConn, d time.Duration) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = raw.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpUserTimeout, int(d.Milliseconds()))
	})
	if err != nil {
		return err
	}
	return serr
}
