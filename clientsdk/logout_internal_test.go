package clientsdk

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/ferrysync/ferry/server/servertest"
)

// roundTripFunc is an http.RoundTripper made of a function.
type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestStopDuringAFailingLogoutHolds: a Logout that fails starts Start's
// loop again only if the application did not stop syncing meanwhile: a
// Stop that returned while the Logout waited for the server holds.
func TestStopDuringAFailingLogoutHolds(t *testing.T) {
	ctx := context.Background()
	srv := servertest.New(t, servertest.Config{})
	arrived, release := make(chan struct{}), make(chan struct{})
	d, err := OpenMemory(WithServer(srv.URL), WithHTTPClient(&http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if strings.HasSuffix(r.URL.Path, "/RevokeDevice") {
			close(arrived)
			<-release
			return nil, errors.New("network down (test)")
		}
		return srv.HTTP.Transport.RoundTrip(r)
	})}))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Register(ctx, "alice", "correct horse", "phone"); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Logout(ctx) }()
	<-arrived
	d.Stop() // the application stops syncing, and Stop returns
	close(release)
	if err := <-done; err == nil {
		t.Fatal("Logout succeeded with the server out of reach")
	}
	d.runMu.Lock()
	running := d.cancel != nil
	d.runMu.Unlock()
	if running {
		t.Fatal("the failed Logout started Start's loop again after Stop had returned")
	}
	if _, err := d.Account(); err != nil {
		t.Fatalf("signed out after a failed Logout: %v", err)
	}
	// A Start, the application's, still works.
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	d.Stop()
}
