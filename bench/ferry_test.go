package bench

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
)

// The harness's devices send uncompressed and accept zstd (FerryConfig):
// a message well over compression.MinBytes goes out with the envelope's
// compressed flag clear, and the stream asks for zstd back.
func TestDevicesSendUncompressedAndAcceptZstd(t *testing.T) {
	type seen struct {
		encoding, accept string
		flags            byte
	}
	got := make(chan seen, 1)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := seen{encoding: r.Header.Get("Connect-Content-Encoding"), accept: r.Header.Get("Connect-Accept-Encoding")}
		var prefix [5]byte // a Connect envelope: flags, then the length
		if _, err := io.ReadFull(r.Body, prefix[:]); err != nil {
			t.Errorf("read the first message: %v", err)
		}
		s.flags = prefix[0]
		got <- s
		w.WriteHeader(http.StatusNotImplemented)
	}))
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	defer srv.Close()

	for _, c := range []struct {
		uncompressed bool
		accept       string
	}{{false, "zstd"}, {true, ""}} {
		f := &Ferry{cfg: FerryConfig{Uncompressed: c.uncompressed}, url: srv.URL}
		_, sync, _ := f.client(-1, &atomic.Int64{}, &atomic.Int64{})
		ctx, cancel := context.WithCancel(t.Context())
		st, err := sync.Sync(ctx)
		if err != nil {
			t.Fatal(err)
		}
		hello := &ferryv1.Hello{Client: strings.Repeat("ferry-bench ", 1000)} // 12 KB, compressible
		_ = st.Send(&ferryv1.SyncRequest{Message: &ferryv1.SyncRequest_Hello{Hello: hello}})
		s := <-got
		cancel()
		if s.flags&1 != 0 || (s.encoding != "" && s.encoding != "identity") {
			t.Errorf("uncompressed %v: sent with flags %#x, Connect-Content-Encoding %q: want it uncompressed", c.uncompressed, s.flags, s.encoding)
		}
		if s.accept != c.accept {
			t.Errorf("uncompressed %v: Connect-Accept-Encoding %q, want %q", c.uncompressed, s.accept, c.accept)
		}
	}
}
