package engine_test

import (
	"errors"
	"testing"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/enginetest"
	"github.com/ferrysync/ferry/internal/feedseal"
)

// TestFeedSealKeepsItsKey: a position a device saved sealed must open
// after the server restarts, and mean nothing in a new epoch, whose
// positions start over. A store from before sealing gets its secret on
// its first open, and opens the plain positions its server sent before,
// and no plain position above them: those it never sent.
func TestFeedSealKeepsItsKey(t *testing.T) {
	o := enginetest.Options(t, 1)
	const pos = 12345
	open := func(newEpoch bool, plain ...uint64) (sealed uint64) {
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
		opens := func(v uint64) bool {
			p, err := e.FeedSeal().Open(v)
			if err != nil && !errors.Is(err, feedseal.ErrMalformed) || err == nil && p != v {
				t.Fatalf("Open(plain %d) = %d, %v", v, p, err)
			}
			return err == nil
		}
		if len(plain) == 0 { // a store sealed from its start
			if opens(1) {
				t.Fatal("a new store opens a plain position, which it never sent")
			}
		}
		for _, p := range plain {
			if !opens(p) {
				t.Fatalf("plain position %d, which the store's server sent, does not open", p)
			}
		}
		if len(plain) > 0 && opens(plain[len(plain)-1]+1) {
			t.Fatalf("plain position %d, past the last sent plain, opens", plain[len(plain)-1]+1)
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

	// Commits, then the store forgets its secret: a store of a build
	// before sealing, whose server sent positions plain up to its last.
	e, err := engine.Open("db", o)
	if err != nil {
		t.Fatal(err)
	}
	alice := enginetest.Register(t, e, "alice")
	conv := alice.Create("c")
	alice.Send(conv, "hello")
	last := engine.ServerFeedPos(e)
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := engine.ForgetSealSecret(o.FS, "db"); err != nil {
		t.Fatal(err)
	}
	made := open(false, 1, last)
	if made == renewed {
		t.Fatal("a store that lost its seal secret sealed as before")
	}
	if again := open(false, 1, last); again != made {
		t.Fatalf("the secret a store got on its first open was not kept: %#x, then %#x", made, again)
	}

	// A secret of 32 bytes alone, as a development build wrote it: the
	// store opens, and takes plain positions up to its position then.
	if err := engine.ShortSealSecret(o.FS, "db", make([]byte, 32)); err != nil {
		t.Fatal(err)
	}
	open(false, 1, last)
}
