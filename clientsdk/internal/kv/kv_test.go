package kv

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

var quiet = slog.New(slog.DiscardHandler)

// lockFails is a file system whose locks fail with err.
type lockFails struct {
	vfs.FS
	err error
}

func (f lockFails) Lock(string) (io.Closer, error) { return nil, f.err }

// TestInUseOnlyWhenHeld: a lock another holds is ErrInUse; a file system
// that cannot lock (no locks on an NFS mount without its daemon, say) is
// its own error, not a process to look for.
func TestInUseOnlyWhenHeld(t *testing.T) {
	for _, c := range []struct {
		err   error
		inUse bool
	}{
		{syscall.EAGAIN, true},
		{syscall.EACCES, true},
		{syscall.ENOLCK, false},
		{syscall.ENOTSUP, false},
		{errors.New("pebble: file locking is not implemented on plan9/amd64"), false},
	} {
		_, err := Open("store", lockFails{vfs.NewMem(), c.err}, quiet)
		if err == nil || errors.Is(err, ErrInUse) != c.inUse {
			t.Errorf("a lock failing with %q: %v; want in use %v", c.err, err, c.inUse)
		}
	}
}

// TestOneProcessOpensAFolderOnce: a folder open in this process is in use
// however its path is spelled (relative, through a link): a second DB's
// Close would otherwise drop the process's lock under the first. Once
// closed, it opens again.
func TestOneProcessOpensAFolderOnce(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "store")
	db, err := Open(dir, vfs.Default, quiet)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(dir, filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	t.Chdir(root)
	for _, spelling := range []string{dir, "store", "./store/", "link"} {
		if _, err := Open(spelling, vfs.Default, quiet); !errors.Is(err, ErrInUse) {
			t.Errorf("a second Open as %q: %v; want ErrInUse", spelling, err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db, err = Open("link", vfs.Default, quiet)
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}
