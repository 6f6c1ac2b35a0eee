package feedseal

import (
	"errors"
	"math/rand/v2"
	"testing"
)

func codec(t testing.TB, seed byte) *Codec {
	t.Helper()
	key := make([]byte, KeySize)
	for i := range key {
		key[i] = seed + byte(i)
	}
	c, err := New(key, 1000)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestSealOpens(t *testing.T) {
	c := codec(t, 1)
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	positions := []uint64{1, 2, 3, 1 << 31, 1<<31 - 1, 1<<31 + 1, domain - 1}
	for range 10000 {
		positions = append(positions, 1+rng.Uint64N(domain-1))
	}
	for _, pos := range positions {
		cur := c.Seal(pos)
		if cur&sealed == 0 {
			t.Fatalf("Seal(%d) = %#x: not marked sealed", pos, cur)
		}
		got, err := c.Open(cur)
		if err != nil || got != pos {
			t.Fatalf("Open(Seal(%d)) = %d, %v", pos, got, err)
		}
	}
}

// TestSealAllSealsZero: SealAll seals zero, which Seal leaves as none, to
// a position that opens to zero; others as Seal does.
func TestSealAllSealsZero(t *testing.T) {
	c := codec(t, 1)
	if c.Seal(0) != 0 {
		t.Fatalf("Seal(0) = %#x, want 0: none", c.Seal(0))
	}
	z := c.SealAll(0)
	if z&sealed == 0 {
		t.Fatalf("SealAll(0) = %#x: not marked sealed", z)
	}
	if got, err := c.Open(z); err != nil || got != 0 {
		t.Fatalf("Open(SealAll(0)) = %d, %v; want 0", got, err)
	}
	for _, pos := range []uint64{1, 2, 1 << 31, domain - 1, domain} {
		if c.SealAll(pos) != c.Seal(pos) {
			t.Errorf("SealAll(%d) = %#x, Seal %#x", pos, c.SealAll(pos), c.Seal(pos))
		}
	}
}

// TestSealsHideTheirDistance is what the package is for: consecutive
// positions sealed are neither in order nor a step apart.
func TestSealsHideTheirDistance(t *testing.T) {
	c := codec(t, 1)
	const n = 1000
	seen := make(map[uint64]bool, n)
	up, step := 0, 0
	prev := c.Seal(1000)
	for pos := uint64(1001); pos < 1001+n; pos++ {
		cur := c.Seal(pos)
		if seen[cur] {
			t.Fatalf("position %d sealed as %#x, as another was", pos, cur)
		}
		seen[cur] = true
		if cur > prev {
			up++
		}
		if cur-prev == 1 {
			step++
		}
		prev = cur
	}
	// A permutation that kept order would go up every time; a random one,
	// about half the time (n/2 ± 5 standard deviations).
	if up < n/2-80 || up > n/2+80 || step > 0 {
		t.Fatalf("of %d consecutive positions sealed, %d went up and %d by one", n, up, step)
	}
	// Another key, another permutation.
	other := codec(t, 2)
	same := 0
	for pos := uint64(1); pos <= n; pos++ {
		if other.Seal(pos) == c.Seal(pos) {
			same++
		}
	}
	if same > 0 {
		t.Fatalf("two keys sealed %d of %d positions alike", same, n)
	}
}

func TestPlainAndMalformed(t *testing.T) {
	c := codec(t, 1)
	// Plain positions up to the last sent plain (1000 here), and past
	// the sealed domain (Seal's), open as they are; between, no server
	// sent them.
	for _, v := range []uint64{0, 1, 1000, domain, sealed - 1} {
		if got, err := c.Open(v); err != nil || got != v {
			t.Fatalf("Open(plain %d) = %d, %v; want it as it is", v, got, err)
		}
	}
	for _, v := range []uint64{1001, 12345, domain - 1} {
		if _, err := c.Open(v); !errors.Is(err, ErrMalformed) {
			t.Fatalf("Open(plain %d, never sent): %v; want ErrMalformed", v, err)
		}
	}
	if c.Seal(0) != 0 {
		t.Fatalf("Seal(0) = %#x; want 0, which means no position", c.Seal(0))
	}
	// Past the domain. (The one sealed value that opens to zero is
	// SealAll's: TestSealAllSealsZero.)
	for _, v := range []uint64{sealed | domain, ^uint64(0)} {
		if _, err := c.Open(v); !errors.Is(err, ErrMalformed) {
			t.Fatalf("Open(%#x): %v; want ErrMalformed", v, err)
		}
	}
	if _, err := New(make([]byte, 8), 0); err == nil {
		t.Fatal("New took an 8-byte key")
	}
}

func BenchmarkSeal(b *testing.B) {
	c := codec(b, 1)
	pos := uint64(1)
	for b.Loop() {
		pos = c.Seal(pos)&halfMask + 1
	}
}
