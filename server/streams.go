package server

import (
	"fmt"
	"slices"

	"connectrpc.com/connect/v2"
	"github.com/oklog/ulid/v2"
)

// A device holds at most Options.MaxStreamsPerDevice sessions. One more
// replaces its oldest rather than being refused: a phone that changes
// networks leaves its old connections open on the server until their
// heartbeats' silence, HTTP/2 pings or TCP_USER_TIMEOUT find them dead,
// and the device's newest connection is the one most likely alive. A
// refusal kept such a device offline until then.
//
// The replaced session ends at its next message boundary, which a write
// stuck on a peer that does not read reaches only at Options.SendTimeout.
// So that slots stay a bound on what a device holds, a device has at most
// MaxStreamsPerDevice replaced sessions still ending; past that a new one
// is refused, as before.

// deviceStreams are one device's sessions.
type deviceStreams struct {
	open    []*streamSlot // oldest first
	closing int           // replaced, not yet ended
}

// A streamSlot is one session's place among its device's.
type streamSlot struct {
	s      *Server
	device ulid.ULID
	// Guarded by s.mu:
	replaced bool   // moved from open to closing
	released bool   // the session ended
	end      func() // ends the session once replaced; nil until it runs
}

// acquireStream takes a slot for a new session of device, replacing the
// device's oldest session when it has MaxStreamsPerDevice, and refuses
// sessions once the server is going away.
func (s *Server) acquireStream(device ulid.ULID) (*streamSlot, error) {
	s.mu.Lock()
	if s.goneAway {
		s.mu.Unlock()
		return nil, connect.NewError(connect.CodeUnavailable, "the server is shutting down; reconnect shortly")
	}
	ds := s.streams[device]
	if ds == nil {
		ds = &deviceStreams{}
		s.streams[device] = ds
	}
	var oldest *streamSlot
	if len(ds.open) >= s.opts.MaxStreamsPerDevice {
		if ds.closing >= s.opts.MaxStreamsPerDevice {
			s.mu.Unlock()
			return nil, connect.NewError(connect.CodeResourceExhausted, fmt.Sprintf(
				"this device has %d open sync sessions, the limit, and %d more it opened before are still closing: retry shortly",
				len(ds.open), ds.closing))
		}
		oldest = ds.open[0]
		ds.open = slices.Delete(ds.open, 0, 1)
		ds.closing++
		oldest.replaced = true
	}
	sl := &streamSlot{s: s, device: device}
	ds.open = append(ds.open, sl)
	s.active.Add(1)
	var end func()
	if oldest != nil {
		end = oldest.end
	}
	s.mu.Unlock()

	s.stats.sessions.Add(1)
	s.stats.sessionsStarted.Add(1)
	if oldest != nil {
		s.stats.sessionsReplaced.Add(1)
		s.log.Debug("sync session replaced by its device's newer one", "device", device.String(), "limit", s.opts.MaxStreamsPerDevice)
		if end != nil {
			end()
		}
	}
	return sl, nil
}

// onReplaced sets how the slot's session ends when a newer one replaces
// it, and runs end at once if one already has. A session sets it again as
// it moves from waiting for its hello to running.
func (sl *streamSlot) onReplaced(end func()) {
	sl.s.mu.Lock()
	sl.end = end
	replaced := sl.replaced && !sl.released
	sl.s.mu.Unlock()
	if replaced {
		end()
	}
}

// isReplaced reports whether a newer session replaced this one.
func (sl *streamSlot) isReplaced() bool {
	sl.s.mu.Lock()
	defer sl.s.mu.Unlock()
	return sl.replaced
}

// release frees the slot as its session ends. It may be called more than
// once.
func (sl *streamSlot) release() {
	s := sl.s
	s.mu.Lock()
	if sl.released {
		s.mu.Unlock()
		return
	}
	sl.released, sl.end = true, nil
	ds := s.streams[sl.device]
	if sl.replaced {
		ds.closing--
	} else {
		ds.open = slices.DeleteFunc(ds.open, func(o *streamSlot) bool { return o == sl })
	}
	if len(ds.open) == 0 && ds.closing == 0 {
		delete(s.streams, sl.device)
	}
	s.mu.Unlock()
	s.stats.sessions.Add(-1)
	s.active.Done()
}

// errReplaced ends a session that its device's newer one replaced.
func (s *Server) errReplaced() error {
	return connect.NewError(connect.CodeResourceExhausted, fmt.Sprintf(
		"this device opened a newer sync session, and a device keeps at most %d: this one, its oldest, is closed",
		s.opts.MaxStreamsPerDevice))
}
