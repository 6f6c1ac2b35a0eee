// Package archtest holds tests of the repository's structure.
package archtest

import (
	"bytes"
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/ferrysync/ferry"

type pkg struct {
	ImportPath string
	Imports    []string // direct imports of the non-test files
	Deps       []string // every package the non-test files need
}

func listPackages(t *testing.T) []pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps=false", "-json", module+"/...")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < 5 {
		t.Fatalf("go list found %d packages", len(pkgs))
	}
	return pkgs
}

func under(p, prefix string) bool {
	return p == module+"/"+prefix || strings.HasPrefix(p, module+"/"+prefix+"/")
}

func hasPrefix(imp string, prefixes ...string) bool {
	for _, pre := range prefixes {
		if imp == pre || strings.HasPrefix(imp, pre+"/") {
			return true
		}
	}
	return false
}

// TestImportRules enforces the architecture: data flows proto -> server ->
// engine -> store, and each layer only reaches the next.
func TestImportRules(t *testing.T) {
	const pebble = "github.com/cockroachdb/pebble/v2"
	rules := []struct {
		applies func(p string) bool
		forbid  func(imp string) bool
		direct  bool // check direct imports only (else every dependency)
		why     string
	}{
		{
			applies: func(p string) bool { return under(p, "engine") },
			forbid: func(imp string) bool {
				return hasPrefix(imp, "connectrpc.com", module+"/proto", module+"/server", module+"/clientsdk")
			},
			why: "the engine is the domain: it knows neither the wire (Connect, proto) nor its callers",
		},
		{
			// Pebble itself pulls in net/http (its error reporting), so this
			// rule is about the engine's own code.
			applies: func(p string) bool { return under(p, "engine") },
			forbid:  func(imp string) bool { return hasPrefix(imp, "net/http") },
			direct:  true,
			why:     "the engine has no network code: the server adapts HTTP to it",
		},
		{
			applies: func(p string) bool { return under(p, "server") || under(p, "proto") },
			forbid:  func(imp string) bool { return hasPrefix(imp, pebble) || hasPrefix(imp, module+"/engine/internal") },
			direct:  true,
			why:     "storage stays behind the engine: the server reaches data only through engine methods that check membership",
		},
		{
			applies: func(p string) bool {
				return !under(p, "engine/internal/store") && !under(p, "clientsdk/internal/kv") && p != module+"/bench"
			},
			forbid: func(imp string) bool { return imp == pebble },
			direct: true,
			why:    "only the two storage layers (the server's engine/internal/store, the SDK's clientsdk/internal/kv) talk to Pebble, and bench, which measures raw Pebble as the ingest ceiling; the rest may use its vfs package to choose a filesystem",
		},
		{
			applies: func(p string) bool { return !under(p, "server") },
			forbid:  func(imp string) bool { return hasPrefix(imp, "github.com/prometheus") },
			direct:  true,
			why:     "the engine keeps plain counters (internal/metric); only the server's /metrics handler speaks Prometheus",
		},
		{
			applies: func(p string) bool { return under(p, "engine/model") },
			forbid: func(imp string) bool {
				return hasPrefix(imp, pebble, module+"/engine/internal") || imp == module+"/engine"
			},
			why: "the model is pure so that the SDK can fold ops exactly like the server, without storage",
		},
		{
			applies: func(p string) bool { return under(p, "clientsdk") },
			forbid: func(imp string) bool {
				return hasPrefix(imp, module+"/server", module+"/engine/internal") || imp == module+"/engine" || imp == module+"/engine/enginetest"
			},
			direct: true,
			why:    "the SDK speaks the wire protocol; it shares only the pure model with the server",
		},
	}
	checked := 0
	for _, p := range listPackages(t) {
		for _, r := range rules {
			if !r.applies(p.ImportPath) {
				continue
			}
			imps := p.Deps
			if r.direct {
				imps = p.Imports
			}
			for _, imp := range imps {
				checked++
				if r.forbid(imp) {
					t.Errorf("%s imports %s: %s", p.ImportPath, imp, r.why)
				}
			}
		}
	}
	if checked == 0 {
		t.Fatal("no imports were checked")
	}
}
