package clientsdk_test

import (
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
