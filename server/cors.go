package server

import (
	"net/http"
	"slices"
	"strings"
)

// CORS lets browser apps served from other origins than the server's call
// its procedures (Connect and gRPC-web): a page's scripts may only read a
// cross-origin response its server allowed, and may only send a request
// with an Authorization header, or a Connect content type, once a
// preflight (OPTIONS) has allowed it. Same-origin pages (the demo) need
// none of it.

// corsRequestHeaders are the request headers the Connect, gRPC-web and
// Ferry's own clients send.
var corsRequestHeaders = strings.Join([]string{
	"Authorization", "Content-Type", "Accept-Encoding",
	"Connect-Protocol-Version", "Connect-Timeout-Ms", "Connect-Content-Encoding", "Connect-Accept-Encoding",
	"Grpc-Timeout", "Grpc-Encoding", "Grpc-Accept-Encoding", "X-Grpc-Web", "X-User-Agent",
}, ", ")

// corsResponseHeaders are the response headers the clients read besides the
// safelisted ones: gRPC-web's status in headers, and the encodings.
var corsResponseHeaders = strings.Join([]string{
	"Grpc-Status", "Grpc-Message", "Grpc-Status-Details-Bin", "Grpc-Encoding", "Connect-Content-Encoding", "Content-Encoding",
}, ", ")

// cors answers the preflights of the allowed origins (Options.CORSOrigins)
// and marks their requests' responses readable by them. A request from
// another origin goes on untouched: the browser keeps its response from
// the page.
func (s *Server) cors(next http.Handler) http.Handler {
	if len(s.opts.CORSOrigins) == 0 {
		return next
	}
	anyOrigin := slices.Contains(s.opts.CORSOrigins, "*")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		if !anyOrigin {
			h.Add("Vary", "Origin") // a cache must not give one origin's answer to another
		}
		origin := r.Header.Get("Origin")
		if origin == "" || !anyOrigin && !slices.ContainsFunc(s.opts.CORSOrigins, func(o string) bool { return strings.EqualFold(o, origin) }) {
			next.ServeHTTP(w, r)
			return
		}
		if anyOrigin {
			h.Set("Access-Control-Allow-Origin", "*") // bearer tokens, not cookies: no credentials mode
		} else {
			h.Set("Access-Control-Allow-Origin", origin)
		}
		if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
			h.Set("Access-Control-Allow-Methods", "POST, GET")
			h.Set("Access-Control-Allow-Headers", corsRequestHeaders)
			h.Set("Access-Control-Max-Age", "7200")
			w.WriteHeader(http.StatusNoContent)
			return
		}
		h.Set("Access-Control-Expose-Headers", corsResponseHeaders)
		next.ServeHTTP(w, r)
	})
}
