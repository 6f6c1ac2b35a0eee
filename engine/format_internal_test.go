package engine

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/ferrysync/ferry/engine/internal/keys"
	"github.com/ferrysync/ferry/engine/internal/record"
	"github.com/ferrysync/ferry/engine/internal/store"
)

// setFormat rewrites the store's format version, as another build left it.
func setFormat(t *testing.T, fs vfs.FS, f uint64) {
	t.Helper()
	st, err := store.Open("db", store.Options{FS: fs, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	b := st.NewBatch()
	b.Set(keys.Meta(keys.MetaFormat), record.AppendUint(nil, f))
	if err := st.Commit(b); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
}

func readFormat(t *testing.T, e *Engine) uint64 {
	t.Helper()
	v := e.st.View()
	defer v.Release()
	raw, err := v.Get(keys.Meta(keys.MetaFormat))
	if err != nil {
		t.Fatal(err)
	}
	f, err := record.DecodeUint(raw)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// Stores of the formats before (from before shared feeds to before users'
// own quotas) open and become the current format, with their epoch kept;
// a format from a newer build is refused.
func TestStoreFormat(t *testing.T) {
	fs := vfs.NewMem()
	o := Options{FS: fs, Logger: slog.New(slog.DiscardHandler), Password: PasswordParams{Time: 1, MemoryKiB: 64, Threads: 1}}
	e, err := Open("db", o)
	if err != nil {
		t.Fatal(err)
	}
	epoch := e.Epoch()
	if f := readFormat(t, e); f != formatVersion {
		t.Errorf("a new store has format %d, want %d", f, formatVersion)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}

	for _, f := range []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9} {
		setFormat(t, fs, f)
		if e, err = Open("db", o); err != nil {
			t.Fatalf("open a format %d store: %v", f, err)
		}
		if got := readFormat(t, e); got != formatVersion {
			t.Errorf("a format %d store opened as format %d, want %d", f, got, formatVersion)
		}
		if e.Epoch() != epoch {
			t.Errorf("the upgrade from format %d changed the epoch from %s to %s", f, epoch, e.Epoch())
		}
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
	}

	// A restored copy of an older store starts a new epoch, and says it
	// was upgraded as well.
	setFormat(t, fs, 2)
	var logged bytes.Buffer
	restored := o
	restored.NewEpoch, restored.Logger = true, slog.New(slog.NewTextHandler(&logged, nil))
	if e, err = Open("db", restored); err != nil {
		t.Fatalf("open a format 2 store in a new epoch: %v", err)
	}
	if got := readFormat(t, e); got != formatVersion || e.Epoch() == epoch {
		t.Errorf("a format 2 store opened in a new epoch: format %d, epoch %s (was %s); want format %d and a new epoch", got, e.Epoch(), epoch, formatVersion)
	}
	if want := fmt.Sprintf("store format upgraded\" from=2 to=%d", formatVersion); !strings.Contains(logged.String(), want) {
		t.Errorf("the log of opening a format 2 store in a new epoch:\n%s\nwant a line with %q", logged.String(), want)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}

	setFormat(t, fs, formatVersion+1)
	if _, err := Open("db", o); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("store format %d is not supported", formatVersion+1)) {
		t.Errorf("opening a format %d store: %v; want it refused", formatVersion+1, err)
	}
}
