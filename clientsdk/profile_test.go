package clientsdk_test

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/ferrysync/ferry/clientsdk"
)

// TestProfileIsTheOwnersAlone: the profile's folder holds the device's
// token, so Open leaves it readable by its owner alone, one it makes and
// one made before it for everyone to read.
func TestProfileIsTheOwnersAlone(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("Windows keeps no Unix permission bits")
	}
	root := t.TempDir()
	made := filepath.Join(root, "made-before")
	if err := os.Mkdir(made, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(made, 0o755); err != nil { // past the umask
		t.Fatal(err)
	}
	for _, dir := range []string{made, filepath.Join(root, "new")} {
		d, err := clientsdk.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(dir)
		if err != nil {
			t.Fatal(err)
		}
		if perm := fi.Mode().Perm(); perm != 0o700 {
			t.Errorf("%s: mode %v after Open; want 0700", dir, perm)
		}
	}
}

// TestProfileInUse: a profile is one device, opened once at a time: a
// second Open, here or in another process, is refused with
// ErrProfileInUse, and works once the first is closed.
func TestProfileInUse(t *testing.T) {
	dir := t.TempDir()
	d, err := clientsdk.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := clientsdk.Open(dir); !errors.Is(err, clientsdk.ErrProfileInUse) {
		t.Fatalf("a second Open: %v, want ErrProfileInUse", err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d, err = clientsdk.Open(dir)
	if err != nil {
		t.Fatalf("Open after the first closed: %v", err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
}
