package clientsdk

import (
	"net/http"
	"testing"
)

// TestDefaultClientsCloseIdleConnections: the HTTP clients a process's
// devices share when given none let an idle connection go (an
// http.Transport made without IdleConnTimeout keeps it for good, after
// the last device on it has closed).
func TestDefaultClientsCloseIdleConnections(t *testing.T) {
	for _, url := range []string{"http://127.0.0.1:1", "https://ferry.invalid"} {
		tr, ok := defaultHTTPClient(url).Transport.(*http.Transport)
		if !ok || tr.IdleConnTimeout <= 0 {
			t.Errorf("the default client for %s keeps idle connections for good", url)
		}
	}
}
