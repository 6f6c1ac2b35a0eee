package server_test

import (
	"bytes"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ferrysync/ferry/server/servertest"
)

// TestHTTP2Limits: the connections HTTPServer serves as h2c itself (it
// sniffs the preface, then hands them to its h2c server: Ferry's own,
// or x/net's with FERRY_TEST_H2C=xnet) get
// Ferry's HTTP/2 limits and HTTP/2's defences against abusive clients, as
// net/http's own would:
//   - the settings advertised;
//   - a client that opens and resets streams faster than their handlers
//     finish (the rapid reset attack, CVE-2023-44487) is cut off with
//     ENHANCE_YOUR_CALM, and no more than MaxConcurrentStreams of its
//     handlers run;
//   - a header block past MaxHeaderBytes, sent in CONTINUATION frames
//     (CVE-2023-45288), ends the connection before any handler runs.
//
// The server serves others all the while.
func TestHTTP2Limits(t *testing.T) {
	var blocked, flooded atomic.Int32
	started := make(chan struct{}, 1000)
	release := make(chan struct{})
	_, addr, _ := startHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/block":
			blocked.Add(1)
			started <- struct{}{}
			<-release
		case "/flood":
			flooded.Add(1)
		}
	}), nil)
	t.Cleanup(func() { close(release) }) // before the server closes

	// headers encodes a request's header block, with pad headers of 1,000
	// bytes. Its encoder is new each time, so that every block stands
	// alone: no entry of a table the connection's decoder may not hold.
	headers := func(path string, pad int) []byte {
		var b bytes.Buffer
		enc := hpack.NewEncoder(&b)
		for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "ferry.test"}, {":path", path}} {
			_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		for range pad {
			_ = enc.WriteField(hpack.HeaderField{Name: "x-pad", Value: strings.Repeat("p", 1000), Sensitive: true})
		}
		return b.Bytes()
	}
	goaway := func(c *h2Client) http2.ErrCode {
		t.Helper()
		return c.until("GOAWAY", func(f http2.Frame) bool { _, ok := f.(*http2.GoAwayFrame); return ok }).(*http2.GoAwayFrame).ErrCode
	}

	c := dialH2(t, addr)
	settings := map[http2.SettingID]uint32{}
	c.until("the server's settings", func(f http2.Frame) bool {
		s, ok := f.(*http2.SettingsFrame)
		if ok && !s.IsAck() {
			_ = s.ForeachSetting(func(s http2.Setting) error { settings[s.ID] = s.Val; return nil })
		}
		return ok && !s.IsAck()
	})
	for id, want := range map[http2.SettingID]uint32{
		http2.SettingMaxConcurrentStreams: 250,
		http2.SettingMaxFrameSize:         16 << 10,
		http2.SettingInitialWindowSize:    1 << 20,
		http2.SettingMaxHeaderListSize:    64<<10 + 10*32, // MaxHeaderBytes, in HTTP/2's unit
	} {
		if settings[id] != want {
			t.Errorf("%v advertised as %d, want %d", id, settings[id], want)
		}
	}

	// Rapid reset: 250 streams whose handlers do not finish, reset at once,
	// then more opened and reset. Their handlers wait for a free slot; past
	// four times the limit waiting, the server hangs up.
	id := uint32(1)
	open := func() error {
		err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: headers("/block", 0), EndStream: true, EndHeaders: true})
		if err == nil {
			err = c.fr.WriteRSTStream(id, http2.ErrCodeCancel)
		}
		id += 2
		return err
	}
	for range 250 {
		if err := open(); err != nil {
			t.Fatal(err)
		}
	}
	for range 250 {
		<-started
	}
	// Both servers refuse the stream that finds more than four times the limit
	// waiting. The server may hang up before the last is written.
	for i := 0; i < 4*250+2 && open() == nil; i++ {
	}
	if code := goaway(c); code != http2.ErrCodeEnhanceYourCalm {
		t.Fatalf("rapid resets: GOAWAY %v, want ENHANCE_YOUR_CALM", code)
	}
	if n := blocked.Load(); n != 250 {
		t.Fatalf("%d handlers ran for one connection, past its 250 streams", n)
	}

	// A header block of about 100 KB, past the 64 KiB limit, in CONTINUATION
	// frames of 4 KB.
	c = dialH2(t, addr)
	block := headers("/flood", 100)
	const piece = 4 << 10
	err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:piece], EndStream: true})
	for rest := block[piece:]; err == nil && len(rest) > 0; rest = rest[min(piece, len(rest)):] {
		err = c.fr.WriteContinuation(1, len(rest) <= piece, rest[:min(piece, len(rest))])
	}
	// The server may hang up before the last piece is written.
	if code := goaway(c); code != http2.ErrCodeProtocol {
		t.Fatalf("a header block past the limit: GOAWAY %v, want PROTOCOL_ERROR", code)
	}
	if n := flooded.Load(); n != 0 {
		t.Fatalf("a handler ran for a header block past the limit")
	}

	// Others were served all the while.
	resp, err := servertest.H2CClient().Get("http://" + addr + "/flood")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 || flooded.Load() != 1 {
		t.Fatalf("a request after the attacks: %s over %s", resp.Status, resp.Proto)
	}
}
