package server

import (
	"log/slog"
	"slices"
	"strings"
	"testing"

	"connectrpc.com/connect/v2"
	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine/enginetest"
)

// TestReplacedSessionsStillClosing: a device's replaced sessions that have
// not ended yet count too, up to the limit again, so that replacing keeps
// what a device holds bounded; a session replaced before it says how to
// end is ended as it does.
func TestReplacedSessionsStillClosing(t *testing.T) {
	s, err := New(enginetest.New(t), Options{Logger: slog.New(slog.DiscardHandler), MaxStreamsPerDevice: 2})
	if err != nil {
		t.Fatal(err)
	}
	phone, laptop := ulid.Make(), ulid.Make()
	var ended []int
	take := func(i int) *streamSlot {
		t.Helper()
		sl, err := s.acquireStream(phone)
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		sl.onReplaced(func() { ended = append(ended, i) })
		return sl
	}
	s0, s1 := take(0), take(1)
	s2 := take(2) // replaces s0, which goes on ending
	s3 := take(3) // replaces s1
	if want := []int{0, 1}; !slices.Equal(ended, want) {
		t.Fatalf("sessions ended %v, want %v", ended, want)
	}
	// Two open, two still closing: a fifth is refused.
	_, err = s.acquireStream(phone)
	if connect.CodeOf(err) != connect.CodeResourceExhausted || !strings.Contains(err.Error(), "still closing") {
		t.Fatalf("a session while two replaced still close: %v, want resource_exhausted", err)
	}
	// Another device is not affected.
	other, err := s.acquireStream(laptop)
	if err != nil {
		t.Fatal(err)
	}
	s0.release()
	s0.release()  // a second release changes nothing
	s4 := take(4) // replaces s2
	if want := []int{0, 1, 2}; !slices.Equal(ended, want) {
		t.Fatalf("sessions ended %v, want %v", ended, want)
	}
	// s1 and s2 still close.
	if _, err := s.acquireStream(phone); connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Fatalf("a session while two replaced still close: %v, want resource_exhausted", err)
	}
	s1.release()
	s5, err := s.acquireStream(phone) // replaces s3; says nothing of how it ends yet
	if err != nil {
		t.Fatal(err)
	}
	s2.release()
	s6 := take(6) // replaces s4
	s3.release()
	take(7) // replaces s5
	// A session replaced before it says how to end ends as it does.
	s5.onReplaced(func() { ended = append(ended, 5) })
	if want := []int{0, 1, 2, 3, 4, 5}; !slices.Equal(ended, want) {
		t.Fatalf("sessions ended %v, want %v", ended, want)
	}
	if got := s.Metrics().SessionsReplaced; got != 6 {
		t.Fatalf("metrics count %d sessions replaced, want 6", got)
	}
	for _, sl := range []*streamSlot{s4, s5, s6, other} {
		sl.release()
	}
	s.mu.Lock()
	left := len(s.streams[phone].open)
	s.mu.Unlock()
	if left != 1 { // take(7)'s
		t.Fatalf("%d sessions open, want 1", left)
	}
	if got := s.Metrics().Sessions; got != 1 {
		t.Fatalf("metrics count %d sessions open, want 1", got)
	}
}
