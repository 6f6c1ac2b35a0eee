//go:build unix

package h2

import "syscall"

// rawReads: a connection with nothing buffered waits for the client
// without a read buffer (reader.read).
const rawReads = true

// rawRead reads the socket fd once, without waiting.
func rawRead(fd uintptr, p []byte) (int, error) {
	n, err := syscall.Read(int(fd), p)
	return max(n, 0), err
}
