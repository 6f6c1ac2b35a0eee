package server

import "testing"

// TestBearerSchemeIgnoresCase: the Authorization header's scheme is
// case-insensitive (RFC 9110, 11.1); anything but Bearer credentials with
// a token is missing credentials.
func TestBearerSchemeIgnoresCase(t *testing.T) {
	for h, want := range map[string]string{
		"Bearer abc":    "abc",
		"bearer abc":    "abc",
		"BEARER  abc ":  "abc",
		" Bearer abc":   "abc",
		"Bearer":        "",
		"Bearer ":       "",
		"Basic abc":     "",
		"Bearerabc":     "",
		"":              "",
		"Token abc def": "",
	} {
		got, ok := bearer(h)
		if ok != (want != "") || got != want && ok {
			t.Errorf("bearer(%q) = %q, %v; want %q", h, got, ok, want)
		}
	}
}
