//go:build !linux

package server

import (
	"net"
	"time"
)

const userTimeoutSupported = false

func setUserTimeout(*net.TCPConn, time.Duration) error { return nil }
