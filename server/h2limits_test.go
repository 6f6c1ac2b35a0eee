package server_test

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ferrysync/ferry/server/servertest"
)

// TestHTTP2Limits: the connections HTTPServer serves as h2c itself (it
// sniffs the preface, then hands them to x/net's HTTP/2 server) get
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
	srv := servertest.New(t, servertest.Config{Wrap: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch r.URL.Path {
			case "/test/block":
				blocked.Add(1)
				started <- struct{}{}
				<-release
			case "/test/flood":
				flooded.Add(1)
			default:
				h.ServeHTTP(w, r)
			}
		})
	}})
	t.Cleanup(func() { close(release) }) // before the server stops
	addr := strings.TrimPrefix(srv.URL, "http://")

	// dial opens an h2c connection and reads the server's settings.
	dial := func() (*http2.Framer, map[http2.SettingID]uint32) {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		// A bound on the whole exchange, should the server hang: the test
		// waits for frames, never for time.
		_ = c.SetDeadline(time.Now().Add(time.Minute))
		if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
			t.Fatal(err)
		}
		fr := http2.NewFramer(c, c)
		fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		if err := fr.WriteSettings(); err != nil {
			t.Fatal(err)
		}
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				t.Fatalf("reading the server's settings: %v", err)
			}
			if s, ok := f.(*http2.SettingsFrame); ok && !s.IsAck() {
				settings := map[http2.SettingID]uint32{}
				_ = s.ForeachSetting(func(s http2.Setting) error { settings[s.ID] = s.Val; return nil })
				if err := fr.WriteSettingsAck(); err != nil {
					t.Fatal(err)
				}
				return fr, settings
			}
		}
	}
	// headers encodes a request's header block. Its encoder is new each
	// time, so that every block stands alone: no entry of a table the
	// connection's decoder may not hold.
	headers := func(path string, pad int) []byte {
		var enc bytes.Buffer
		henc := hpack.NewEncoder(&enc)
		for _, f := range []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "http"}, {Name: ":authority", Value: addr}, {Name: ":path", Value: path}} {
			_ = henc.WriteField(f)
		}
		for i := 0; i < pad; i++ {
			_ = henc.WriteField(hpack.HeaderField{Name: "x-pad", Value: strings.Repeat("p", 1000), Sensitive: true})
		}
		return enc.Bytes()
	}
	// goaway reads until the server's GOAWAY and returns its code; the
	// connection closing without one fails the test.
	goaway := func(fr *http2.Framer) http2.ErrCode {
		t.Helper()
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				t.Fatalf("the connection ended without a GOAWAY: %v", err)
			}
			if g, ok := f.(*http2.GoAwayFrame); ok {
				return g.ErrCode
			}
		}
	}

	fr, settings := dial()
	for id, want := range map[http2.SettingID]uint32{
		http2.SettingMaxConcurrentStreams: 250,
		http2.SettingMaxFrameSize:         1 << 20,
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
	open := func(path string) error {
		err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: headers(path, 0), EndStream: true, EndHeaders: true})
		if err == nil {
			err = fr.WriteRSTStream(id, http2.ErrCodeCancel)
		}
		id += 2
		return err
	}
	for range 250 {
		if err := open("/test/block"); err != nil {
			t.Fatal(err)
		}
	}
	for range 250 {
		<-started
	}
	// Past four times the limit waiting: x/net refuses the stream that
	// finds more than 1,000 waiting. The server may hang up before the
	// last is written.
	for i := 0; i < 4*250+2 && open("/test/block") == nil; i++ {
	}
	if code := goaway(fr); code != http2.ErrCodeEnhanceYourCalm {
		t.Fatalf("rapid resets: GOAWAY %v, want ENHANCE_YOUR_CALM", code)
	}
	if n := blocked.Load(); n != 250 {
		t.Fatalf("%d handlers ran for one connection, past its 250 streams", n)
	}

	// A header block of about 100 KB, past the 64 KiB limit, in CONTINUATION
	// frames of 4 KB.
	fr, _ = dial()
	block := headers("/test/flood", 100)
	const piece = 4 << 10
	err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:piece], EndStream: true})
	for rest := block[piece:]; err == nil && len(rest) > 0; rest = rest[min(piece, len(rest)):] {
		err = fr.WriteContinuation(1, len(rest) <= piece, rest[:min(piece, len(rest))])
	}
	// The server may hang up before the last piece is written.
	if code := goaway(fr); code != http2.ErrCodeProtocol {
		t.Fatalf("a header block past the limit: GOAWAY %v, want PROTOCOL_ERROR", code)
	}
	if n := flooded.Load(); n != 0 {
		t.Fatalf("a handler ran for a header block past the limit")
	}

	// Others were served all the while.
	resp, err := srv.HTTP.Get(srv.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
		t.Fatalf("healthz over %s: %s", resp.Proto, resp.Status)
	}
}
