package units

import "testing"

func TestBytes(t *testing.T) {
	for n, want := range map[int64]string{
		0: "0 bytes", 1: "1 byte", 900: "900 bytes", 1023: "1023 bytes", 1024: "1.0 KiB", 12800: "12.5 KiB",
		3 << 20: "3.0 MiB", 2 << 30: "2.0 GiB", 3 << 39: "1.5 TiB", 1 << 50: "1024.0 TiB",
	} {
		if got := Bytes(n); got != want {
			t.Errorf("Bytes(%d) = %q, want %q", n, got, want)
		}
	}
}
