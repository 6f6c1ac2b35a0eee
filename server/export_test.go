package server

// Senders counts the Sync sessions' sender goroutines.
func Senders(s *Server) int64 { return s.senders.Load() }

// SenderStarts counts the sender goroutines started.
func SenderStarts(s *Server) int64 { return s.senderStarts.Load() }

// OnSenderExit makes f run as each sender goroutine of s ends, after
// Senders counts it out.
func OnSenderExit(s *Server, f func()) { s.testSenderExit.Store(&f) }

// SenderLinger is how long an active session's sender waits for more.
const SenderLinger = senderLinger

// HTTPConns counts the plain connections s holds: those still being read
// for their protocol, and those served as HTTP/2.
func HTTPConns(s *HTTPServer) (sniffing, h2 int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, isH2 := range s.conns {
		if isH2 {
			h2++
		} else {
			sniffing++
		}
	}
	return sniffing, h2
}
