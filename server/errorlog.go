package server

import (
	"log"
	"strings"
	"sync"
	"time"
)

// tlsWarnEvery is how often at most a failed TLS handshake is logged at
// WARN; the others go at DEBUG.
const tlsWarnEvery = 10 * time.Minute

// ErrorLog returns a logger for the http.Server's ErrorLog
// (HTTPServer.HTTP.ErrorLog): what net/http and the HTTP/2 server report
// goes to the server's logger at WARN, but for TLS handshakes that fail.
// On a public port, scanners, load balancers' TCP health checks and
// clients that give up fail them by the thousand, each a line of no use:
// they are counted (ferry_tls_handshake_errors_total) and logged at
// DEBUG, and one every ten minutes at most at WARN, with how many failed
// since the last, so that a certificate clients refuse still shows.
func (s *Server) ErrorLog() *log.Logger {
	return log.New(&errorLog{s: s}, "", 0)
}

// errorLog writes net/http's log lines to the server's logger.
type errorLog struct {
	s      *Server
	mu     sync.Mutex
	warned time.Time // when a failed handshake last went at WARN; zero: never
	failed uint64    // failed handshakes since
}

func (w *errorLog) Write(p []byte) (int, error) {
	msg := strings.TrimRight(string(p), "\n")
	rest, ok := strings.CutPrefix(msg, "http: TLS handshake error from ")
	if !ok {
		w.s.log.Warn(msg)
		return len(p), nil
	}
	w.s.stats.tlsHandshakeErrors.Add(1)
	remote, err, _ := strings.Cut(rest, ": ")
	now := w.s.opts.Clock.Now()
	w.mu.Lock()
	w.failed++
	failed := w.failed
	warn := w.warned.IsZero() || now.Sub(w.warned) >= tlsWarnEvery
	if warn {
		w.warned, w.failed = now, 0
	}
	w.mu.Unlock()
	if !warn {
		w.s.log.Debug("TLS handshake failed", "remote", remote, "err", err)
		return len(p), nil
	}
	w.s.log.Warn("TLS handshake failed (scanners and health checks that speak plain TCP fail them too: "+
		"logged at WARN once every 10 minutes at most, the rest at DEBUG, all counted in ferry_tls_handshake_errors_total)",
		"remote", remote, "err", err, "failed_since_last_warning", failed)
	return len(p), nil
}
