//go:build !unix

package main

import "testing"

// sendSIGHUP skips the rest of the test: there is no SIGHUP to send here.
func sendSIGHUP(t *testing.T) {
	t.Skip("no SIGHUP on this system")
}
