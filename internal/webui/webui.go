// Package webui serves the demo chat page: the static build of
// clientsdk/web/demo, embedded in the binary so that ferryd needs no
// Node.js at run time. `make generate` rebuilds dist/ with esbuild (pinned
// in clientsdk/web/package-lock.json) and CI checks that it is current.
package webui

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed dist
var dist embed.FS

// Register routes the page (GET /) and its script (GET /demo.js) on m,
// beside Connect's procedures, which have paths of their own.
func Register(m *http.ServeMux) {
	h := Handler()
	m.Handle("GET /{$}", h)
	m.Handle("GET /demo.js", h)
}

// Handler serves the page at / and its assets.
func Handler() http.Handler {
	sub, err := fs.Sub(dist, "dist")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := http.FileServerFS(sub)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The page is small and changes with the binary: revalidate.
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:")
		files.ServeHTTP(w, r)
	})
}
