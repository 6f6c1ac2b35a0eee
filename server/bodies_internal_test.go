package server

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

// deadlineWriter records the read deadlines set through it.
type deadlineWriter struct {
	*httptest.ResponseRecorder
	deadlines []time.Time
}

func (w *deadlineWriter) SetReadDeadline(t time.Time) error {
	w.deadlines = append(w.deadlines, t)
	return nil
}

// A body's timeout bounds each read, not the whole body: every read gets
// a deadline of its own, from when it starts, so a slow link that keeps
// sending is never cut off.
func TestBodyTimeoutBoundsEachRead(t *testing.T) {
	w := &deadlineWriter{ResponseRecorder: httptest.NewRecorder()}
	const timeout = time.Hour
	b := &deadlineBody{ReadCloser: io.NopCloser(iotest.OneByteReader(strings.NewReader("abcd"))), rc: http.NewResponseController(w), timeout: timeout}
	var starts []time.Time
	p := make([]byte, 8)
	for {
		starts = append(starts, time.Now())
		_, err := b.Read(p)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(w.deadlines) != len(starts) || len(starts) != 5 {
		t.Fatalf("%d deadlines for %d reads of 4 bytes one at a time, want one per read, 5", len(w.deadlines), len(starts))
	}
	// Past the end, reads set no deadline: the connection may be read by
	// the server by then, and a deadline would cut it.
	if n, err := b.Read(p); n != 0 || err != io.EOF || len(w.deadlines) != 5 {
		t.Fatalf("a read past the end: %d, %v, %d deadlines; want EOF and no new deadline", n, err, len(w.deadlines))
	}
	for i, d := range w.deadlines {
		if d.Before(starts[i].Add(timeout)) {
			t.Fatalf("read %d's deadline is %v before the read started plus the timeout", i, starts[i].Add(timeout).Sub(d))
		}
	}
}
