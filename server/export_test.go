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
