//go:build !linux

package server

import (
	"errors"
	"net"
	"time"
)

func userTimeout(*net.TCPConn) (time.Duration, error) {
	return 0, errors.New("no TCP_USER_TIMEOUT here")
}
