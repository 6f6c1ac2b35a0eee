package engine_test

import (
	"testing"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/enginetest"
)

// TestFeedSealKeepsItsKey: a position a device saved sealed must open
// after the server restarts, and mean nothing in a new epoch, whose
// positions start over. A store from before sealing gets its secret on
// its first open.
func TestFeedSealKeepsItsKey(t *testing.T) {
	o := enginetest.Options(t, 1)
	const pos = 12345
	open := func(newEpoch bool) (sealed uint64) {
		t.Helper()
		o.NewEpoch = newEpoch
		e, err := engine.Open("db", o)
		if err != nil {
			t.Fatal(err)
		}
		defer e.Close()
		c := e.FeedSeal().Seal(pos)
		if got, err := e.FeedSeal().Open(c); err != nil || got != pos {
			t.Fatalf("Open(Seal(%d)) = %d, %v", pos, got, err)
		}
		return c
	}
	first := open(false)
	if again := open(false); again != first {
		t.Fatalf("after a restart position %d seals to %#x; it was %#x", pos, again, first)
	}
	renewed := open(true)
	if renewed == first {
		t.Fatalf("a new epoch seals position %d as the old one did", pos)
	}
	if err := engine.ForgetSealSecret(o.FS, "db"); err != nil {
		t.Fatal(err)
	}
	made := open(false)
	if made == renewed {
		t.Fatal("a store that lost its seal secret sealed as before")
	}
	if again := open(false); again != made {
		t.Fatalf("the secret a store got on its first open was not kept: %#x, then %#x", made, again)
	}
}
