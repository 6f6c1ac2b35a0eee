package server_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect/v2"
	"connectrpc.com/connect/v2/connecthttp"

	"github.com/ferrysync/ferry/internal/wire"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
	"github.com/ferrysync/ferry/proto/ferry/v1/ferryv1connect"
	"github.com/ferrysync/ferry/server"
	"github.com/ferrysync/ferry/server/servertest"
)

// Sync over HTTP/1.1 gets an error that names what to use instead, in the
// protocol the client speaks, where Connect's own answer is a bare 505.
// (Connect's Go client finds out by itself; curl, and clients in other
// languages, do not.)
func TestSyncOverHTTP1SaysWhatToUse(t *testing.T) {
	var log logBuffer
	srv := servertest.New(t, servertest.Config{Server: func(o *server.Options) {
		o.Logger = slog.New(slog.NewTextHandler(&log, nil))
	}})
	alice := srv.Register("alice")
	http1 := &http.Client{Transport: &http.Transport{}}
	for _, tc := range []struct {
		contentType string
		code        func(*http.Response, string) string
	}{
		{"application/connect+proto", func(_ *http.Response, body string) string { return body }},
		{"application/connect+json", func(_ *http.Response, body string) string { return body }},
		{"application/grpc-web+proto", func(r *http.Response, _ string) string {
			return "grpc-status " + r.Header.Get("Grpc-Status") + " " + r.Header.Get("Grpc-Message")
		}},
	} {
		t.Run(tc.contentType, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodPost, srv.URL+ferryv1connect.SyncServiceSyncProcedure, strings.NewReader(""))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", tc.contentType)
			req.Header.Set("Authorization", "Bearer "+alice.Session.GetToken())
			resp, err := http1.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			got := tc.code(resp, string(b))
			if resp.ProtoMajor != 1 || !resp.Close || !strings.Contains(got, "needs HTTP/2") || !strings.Contains(got, "Subscribe") ||
				!(strings.Contains(got, `"unimplemented"`) || strings.Contains(got, "grpc-status 12 ")) {
				t.Fatalf("Sync over HTTP/%d.%d: %s %q (close %v); want unimplemented, saying it needs HTTP/2 and to use Subscribe, and the connection closed",
					resp.ProtoMajor, resp.ProtoMinor, resp.Status, got, resp.Close)
			}
		})
	}
	// The operator sees them: counted, and logged once a minute at most
	// with what to change (a proxy that forwards HTTP/1.1, most likely).
	if n := srv.Server.Metrics().Calls[ferryv1connect.SyncServiceSyncProcedure][connect.CodeUnimplemented]; n != 3 {
		t.Errorf("%d refused Syncs counted, want 3", n)
	}
	if n := strings.Count(log.String(), "came over HTTP/1.1"); n != 1 || !strings.Contains(log.String(), "h2c") {
		t.Errorf("logged %d times, want once, naming h2c: %s", n, log.String())
	}
	srv.Clock.Advance(time.Minute)
	resp, err := http1.Post(srv.URL+ferryv1connect.SyncServiceSyncProcedure, "application/connect+proto", strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if n := strings.Count(log.String(), "came over HTTP/1.1"); n != 2 {
		t.Errorf("logged %d times after a minute, want twice", n)
	}
	// Over HTTP/2 the same call is served.
	c := connect.NewClient(connecthttp.NewTransport(srv.HTTP, srv.URL), wire.Bearer(alice.Session.GetToken()))
	st, err := ferryv1connect.NewSyncServiceClient(c).Sync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Send(&ferryv1.SyncRequest{Message: &ferryv1.SyncRequest_Hello{Hello: &ferryv1.Hello{}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Receive(); err != nil {
		t.Fatalf("Sync over HTTP/2: %v", err)
	}
}

// A unary call whose request body stalls fails after BodyTimeout, over
// HTTP/1.1 and HTTP/2, instead of holding its connection for good; so
// does a Subscribe whose hello stalls, which has not yet counted against
// its device's streams.
func TestStalledRequestBodyIsCut(t *testing.T) {
	srv := servertest.New(t, servertest.Config{Server: func(o *server.Options) { o.BodyTimeout = 50 * time.Millisecond }})
	login := ferryv1connect.AccountServiceLoginProcedure

	t.Run("http/1.1", func(t *testing.T) {
		c, err := net.Dial("tcp", strings.TrimPrefix(srv.URL, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(hangGuard))
		// Headers promising 100 bytes, and 3 of them.
		fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: ferry\r\nContent-Type: application/proto\r\nContent-Length: 100\r\n\r\nabc", login)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("no response to a stalled body: %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		wantCut(t, resp.StatusCode, string(body))
	})

	t.Run("http/2", func(t *testing.T) {
		status, body := stalled(t, srv.URL+login, srv.HTTP)
		wantCut(t, status, body)
	})

	t.Run("subscribe", func(t *testing.T) {
		// A stream's error comes in its end message, after a 200.
		token := srv.Register("stalling").Session.GetToken()
		status, body := stalledAs(t, srv.URL+ferryv1connect.SyncServiceSubscribeProcedure, srv.HTTP, "application/connect+proto", token)
		if status != http.StatusOK || !strings.Contains(body, `"deadline_exceeded"`) || !strings.Contains(body, "sent nothing for 50ms") {
			t.Fatalf("a Subscribe whose hello stalled got %d %q; want deadline_exceeded, saying it sent nothing for 50ms", status, body)
		}
	})

	t.Run("held call", func(t *testing.T) {
		// A unary call over HTTP/1.1 whose body has arrived, and which then
		// waits longer than the body timeout, here for the push limit, is
		// answered: no deadline is left on its connection. Over gRPC-Web
		// too, whose handler reads once more after the message.
		srv := servertest.New(t, servertest.Config{Server: func(o *server.Options) {
			o.BodyTimeout = 250 * time.Millisecond // long enough for the setup's pushes on a loaded machine
			o.PushLimit, o.PushBurst = 10, 1000
		}})
		alice := newDev(t, srv.Register("alice"))
		conv := alice.createConv("room") // 1 op of the burst
		ops := make([]*ferryv1.Op, 999)
		for i := range ops {
			ops[i] = alice.op(conv, msg(fmt.Sprint("burst ", i)))
		}
		alice.push(conv, ops...) // the rest
		throttled := make(chan struct{}, 1)
		server.OnThrottle(srv.Server, func() { throttled <- struct{}{} })
		http1 := &http.Client{Transport: &http.Transport{}}
		for _, tc := range []struct {
			name string
			opts []connecthttp.Option
		}{{"connect", nil}, {"grpc-web", []connecthttp.Option{connecthttp.WithGRPCWeb()}}} {
			c := connect.NewClient(connecthttp.NewTransport(http1, srv.URL, tc.opts...), wire.Bearer(alice.Session.GetToken()))
			done := make(chan error, 1)
			go func() {
				_, err := ferryv1connect.NewSyncServiceClient(c).Ack(context.Background(), &ferryv1.AckRequest{
					Markers: []*ferryv1.Marker{{ConversationId: conv, Delivered: 1}}})
				done <- err
			}()
			select {
			case <-throttled:
			case <-time.After(hangGuard):
				t.Fatalf("%s: the ack did not wait for the push limit", tc.name)
			}
			// A stalled call started after the ack's body was read has failed
			// once its own body timeout has passed: so would have the ack's.
			_, _ = stalled(t, srv.URL+login, srv.HTTP)
			srv.Clock.Advance(100 * time.Millisecond) // the ack's wait
			if err := <-done; err != nil {
				t.Fatalf("%s: an ack held past the body timeout: %v", tc.name, err)
			}
		}
	})
}

// wantCut fails the test unless a stalled call's answer says why it failed.
func wantCut(t *testing.T, status int, body string) {
	t.Helper()
	if status != http.StatusGatewayTimeout || !strings.Contains(body, `"deadline_exceeded"`) || !strings.Contains(body, "sent nothing for 50ms") {
		t.Fatalf("a stalled body got %d %s; want deadline_exceeded, saying it sent nothing for 50ms", status, body)
	}
}

// stalled makes a unary call at url whose body stalls after 3 bytes, and
// returns the server's answer.
func stalled(t *testing.T, url string, client *http.Client) (status int, body string) {
	t.Helper()
	return stalledAs(t, url, client, "application/proto", "")
}

// stalledAs is stalled with the request's content type, and a token when
// not empty.
func stalledAs(t *testing.T, url string, client *http.Client, contentType, token string) (status int, body string) {
	t.Helper()
	pr, pw := io.Pipe()
	defer pw.Close()
	req, err := http.NewRequest(http.MethodPost, url, pr)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", contentType)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	go func() { _, _ = pw.Write([]byte("abc")) }() // and nothing more
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	resp, err := client.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatalf("no answer to a stalled body: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(b)
}

// TestUnreadableTypeSaysWhatToSend: a call whose Content-Type no protocol
// of the server's reads (curl's default, a form's) gets a 415 that says
// what to send, where Connect's own is empty; the types it names are read.
func TestUnreadableTypeSaysWhatToSend(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	post := func(ct string) (int, string) {
		t.Helper()
		resp, err := srv.HTTP.Post(srv.URL+ferryv1connect.AccountServiceLoginProcedure, ct, strings.NewReader(`{"username":"nobody","password":"wrong horse"}`))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, ct := range []string{"application/x-www-form-urlencoded", "", "text/plain"} {
		code, body := post(ct)
		if code != http.StatusUnsupportedMediaType || !strings.Contains(body, "send application/json or application/proto") {
			t.Errorf("Content-Type %q: %d %q, want 415 saying what to send", ct, code, body)
		}
	}
	// JSON is read: the login is refused for its password, not its type.
	if code, body := post("application/json; charset=utf-8"); code != http.StatusUnauthorized || !strings.Contains(body, "unauthenticated") {
		t.Errorf("application/json: %d %q, want the login refused", code, body)
	}
}
