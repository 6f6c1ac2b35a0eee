//go:build !unix

package h2

// rawReads is false: a connection keeps its read buffer for its life.
const rawReads = false

func rawRead(uintptr, []byte) (int, error) { panic("h2: raw reads on a system without them") }
