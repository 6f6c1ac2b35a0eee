package engine_test

import (
	"errors"
	"testing"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/enginetest"
)

// FuzzAuthenticate: no string panics the token check, and only the real
// token authenticates.
func FuzzAuthenticate(f *testing.F) {
	e := enginetest.New(f)
	alice := enginetest.Register(f, e, "alice")
	f.Add(alice.Token)
	f.Add("fy1_")
	f.Add("fy1_" + alice.Token[4:len(alice.Token)-1] + "A")
	f.Add("Bearer x")
	f.Fuzz(func(t *testing.T, token string) {
		a, err := e.Authenticate(token)
		if token == alice.Token {
			if err != nil || a != alice.Actor {
				t.Fatalf("the real token failed: %v", err)
			}
			return
		}
		if !errors.Is(err, engine.ErrUnauthenticated) {
			t.Fatalf("token %q: got %v, want ErrUnauthenticated", token, err)
		}
	})
}
