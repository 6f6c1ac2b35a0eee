package server_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/ferrysync/ferry/server"
	"github.com/ferrysync/ferry/server/servertest"
)

// TestCORS: a browser app served from an allowed origin gets its
// preflight answered (the Connect headers and Authorization allowed) and
// may read the responses, gRPC-web's status headers too; another origin,
// or a server that allows none, gets no CORS headers, so the browser keeps
// the response from the page.
func TestCORS(t *testing.T) {
	srv := servertest.New(t, servertest.Config{Server: func(o *server.Options) { o.CORSOrigins = []string{"https://app.example.com"} }})
	do := func(method, origin string) *http.Response {
		t.Helper()
		req, err := http.NewRequest(method, srv.URL+"/ferry.v1.AccountService/GetAccount", strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Origin", origin)
		if method == http.MethodOptions {
			req.Header.Set("Access-Control-Request-Method", "POST")
			req.Header.Set("Access-Control-Request-Headers", "authorization, content-type, connect-protocol-version")
		} else {
			req.Header.Set("Content-Type", "application/json")
		}
		res, err := srv.HTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res
	}
	pre := do(http.MethodOptions, "https://app.example.com")
	allowed := strings.ToLower(pre.Header.Get("Access-Control-Allow-Headers"))
	if pre.StatusCode != http.StatusNoContent || pre.Header.Get("Access-Control-Allow-Origin") != "https://app.example.com" ||
		!strings.Contains(pre.Header.Get("Access-Control-Allow-Methods"), "POST") ||
		!strings.Contains(allowed, "authorization") || !strings.Contains(allowed, "connect-protocol-version") {
		t.Fatalf("preflight: %d %v", pre.StatusCode, pre.Header)
	}
	res := do(http.MethodPost, "https://app.example.com")
	if res.StatusCode != http.StatusUnauthorized || res.Header.Get("Access-Control-Allow-Origin") != "https://app.example.com" ||
		!strings.Contains(res.Header.Get("Access-Control-Expose-Headers"), "Grpc-Status") {
		t.Fatalf("call: %d %v", res.StatusCode, res.Header)
	}
	for _, r := range []*http.Response{do(http.MethodOptions, "https://evil.example"), do(http.MethodPost, "https://evil.example")} {
		if r.Header.Get("Access-Control-Allow-Origin") != "" {
			t.Fatalf("another origin was allowed: %v", r.Header)
		}
	}

	none := servertest.New(t, servertest.Config{})
	req, _ := http.NewRequest(http.MethodOptions, none.URL+"/ferry.v1.AccountService/GetAccount", nil)
	req.Header.Set("Origin", "https://app.example.com")
	req.Header.Set("Access-Control-Request-Method", "POST")
	r, err := none.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatalf("a server that allows no origin allowed one: %v", r.Header)
	}
	for _, bad := range []string{"app.example.com", "https://app.example.com/", "https://app.example.com/path", "https://"} {
		if err := (server.Options{CORSOrigins: []string{bad}}).Check(); err == nil || !strings.Contains(err.Error(), "scheme://host") {
			t.Errorf("origin %q: %v", bad, err)
		}
	}
	// Any origin's response varies with it, where origins are listed: a
	// shared cache must not give one origin's answer (without CORS
	// headers) to another; and origins match without regard to case.
	if r := do(http.MethodPost, "https://evil.example"); !strings.Contains(strings.Join(r.Header.Values("Vary"), ","), "Origin") {
		t.Errorf("another origin's response does not vary with Origin: %v", r.Header)
	}
	if r := do(http.MethodPost, "https://App.Example.com"); r.Header.Get("Access-Control-Allow-Origin") == "" {
		t.Errorf("the allowed origin in other case was refused: %v", r.Header)
	}
}
