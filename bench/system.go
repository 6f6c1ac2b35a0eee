package bench

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// A System is a message server under test, with its clients. Conversations
// (channels, subjects) and clients (devices, connections) are numbered from
// 0 by the workloads; the system maps them to its own names.
type System interface {
	Name() string
	// Prepare creates clients 0..clients-1 and conversations, where
	// members[c] lists the clients of conversation c.
	Prepare(ctx context.Context, clients int, members [][]int) error
	// Connect connects client i and catches it up; from then on messages of
	// its conversations arrive live to onMessage (which may be nil).
	Connect(ctx context.Context, i int, onMessage func(conv int, payload []byte)) (Client, error)
	// Usage is the server process's resource use so far.
	Usage() (Usage, error)
	// DiskBytes is the store's size, after a full compaction when possible.
	DiskBytes(ctx context.Context) (int64, error)
	Close() error
}

// A Client is one connected client.
type Client interface {
	// Send publishes payloads into conversation conv as one durable write
	// where the system allows it; done runs once the server acknowledged
	// them all durably, or with the error that failed them. Send may be
	// called again before done runs. When Send returns an error, done does
	// not run.
	Send(conv int, payloads [][]byte, done func(error)) error
	// Disconnect goes offline, remembering where the client stands.
	Disconnect() error
	// CatchUp reconnects and fetches everything missed since Disconnect,
	// returning when caught up.
	CatchUp(ctx context.Context) (CatchUp, error)
	Close() error
}

// CatchUp describes one catch-up.
type CatchUp struct {
	Ops        int           `json:"ops"`
	Duration   time.Duration `json:"duration_ns"`
	RoundTrips int           `json:"round_trips"` // requests that had to wait for an answer
	WireBytes  int64         `json:"wire_bytes"`  // read from the network, compressed as sent
}

// Usage is a process's resource use.
type Usage struct {
	CPU     time.Duration `json:"cpu_ns"`   // user + system
	PeakRSS int64         `json:"peak_rss"` // bytes
	RSS     int64         `json:"rss"`      // bytes, now
}

// A PeakResetter is a System that can start its server's peak RSS afresh,
// so that a row's peak is its own and not that of the history written
// before it. startUsage calls it.
type PeakResetter interface {
	ResetPeakRSS() error
}

// ResetPeakRSS starts a process's peak RSS (VmHWM) afresh, from its
// resident memory now: /proc/PID/clear_refs on Linux 4.0 and later.
func ResetPeakRSS(pid int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}

// ProcessUsage reads a process's usage from /proc (Linux).
func ProcessUsage(pid int) (Usage, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return Usage{}, err
	}
	// Fields after the command name (which may contain spaces).
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	const ticks = 100 // USER_HZ on Linux
	u := Usage{CPU: time.Duration(utime+stime) * time.Second / ticks}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Usage{}, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmHWM":
			u.PeakRSS = n << 10
		case "VmRSS":
			u.RSS = n << 10
		}
	}
	return u, nil
}

// Parallel runs fn(0..n-1) with at most width at a time and returns the
// first error (or ctx's, if it ended first). Systems use it to register and
// connect many clients.
func Parallel(ctx context.Context, n, width int, fn func(int) error) error {
	sem := make(chan struct{}, width)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	for i := range n {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := fn(i); err != nil {
				mu.Lock()
				if first == nil {
					first = err
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return first
}

// CountingConn adds the bytes read from a connection to Bytes: how systems
// measure bytes on the wire, compressed as sent.
type CountingConn struct {
	net.Conn
	Bytes *atomic.Int64
}

func (c *CountingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.Bytes.Add(int64(n))
	return n, err
}
