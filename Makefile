# Ferry's build. `make help` lists the targets.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules --warn-undefined-variables

GO ?= go
BUF := $(GO) tool -modfile=tools/go.mod buf
BIN := bin
ADDR ?= 127.0.0.1:8080
DATA ?= ./data
FUZZTIME ?= 30s
BENCHTIME ?= 1s
RESULTS ?= bench/results
# make bench-compare: the git revision to compare the working tree with,
# the workloads, the rows (those whose names contain ROWS) and the pairs
# of runs of each row.
BASE ?=
ONLY ?= ingest,fanout
ROWS ?=
PAIRS ?= 4
WEB := clientsdk/web
TESTFLAGS ?=
# The newer Go release the tests also run on; the go command fetches it
# from the module proxy (about 76 MB, once).
GO127 ?= go1.27.3

.PHONY: help
help: ## Describe the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-14s %s\n", $$1, $$2}'

.PHONY: build
build: ## Build ferryd, ferry and ferry-bench into ./bin
	$(GO) build -o $(BIN)/ ./cmd/...

.PHONY: run
run: build ## Build and start ferryd on $(ADDR) with its store in $(DATA)
	$(BIN)/ferryd --addr "$(ADDR)" --data "$(DATA)" --allow-registration

.PHONY: test
test: test-go test-go127 test-h2spec test-web ## Run every test: Go with the race detector, again on Go 1.27, h2spec's HTTP/2 conformance suite, then the web client (what CI runs)

.PHONY: test-go
test-go: ## The Go tests, with the race detector; the server's and the SDK's again over x/net's h2c server (--h2c=xnet)
	$(GO) test -race -count=1 -timeout 20m $(TESTFLAGS) ./...
	FERRY_TEST_H2C=xnet $(GO) test -tags http2legacy -race -count=1 -timeout 20m $(TESTFLAGS) ./server/... ./clientsdk/...

# Built with Go 1.27, x/net/http2 serves and dials through net/http unless
# built with -tags http2legacy: the build users of the newer Go get.
.PHONY: test-go127
test-go127: ## The Go tests once more on $(GO127), without the race detector
	GOTOOLCHAIN=$(GO127) $(GO) test -count=1 -timeout 20m $(TESTFLAGS) ./...
	FERRY_TEST_H2C=xnet GOTOOLCHAIN=$(GO127) $(GO) test -tags http2legacy -count=1 -timeout 20m $(TESTFLAGS) ./server/... ./clientsdk/...

.PHONY: test-h2spec
test-h2spec: ## h2spec's HTTP/2 conformance suite against both h2c servers (internal/h2/conformance, a module of its own)
	$(GO) test -C internal/h2/conformance -tags http2legacy -race -count=1 -timeout 5m ./...

.PHONY: test-web
test-web: $(WEB)/node_modules/.installed chromium ## The web client's tests: unit, against ferryd, and end to end in Chromium
	cd $(WEB) && npm test

# debian-package installs Debian's package $(1), whose command has the same
# name, when that command is missing; $(2) says what for.
debian-package = command -v $(1) >/dev/null || { \
	  echo "installing Debian's $(1) $(2)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1); }

# Debian's Chromium, for the end-to-end test.
.PHONY: chromium
chromium:
	@$(call debian-package,chromium,for the browser tests)

# Debian's redis-server, for the durable Centrifugo of bench-peers
# (centrifugo+redis). The harness starts its own server on a fresh folder
# for each workload.
.PHONY: redis-server
redis-server:
	@$(call debian-package,redis-server,for the durable Centrifugo of bench-peers)

# The web client's npm packages, exactly as package-lock.json pins them.
$(WEB)/node_modules/.installed: $(WEB)/package-lock.json
	cd $(WEB) && npm ci --no-audit --no-fund
	@touch $@

.PHONY: test-short
test-short: ## Run the tests without the race detector, for a quick check
	$(GO) test -count=1 $(TESTFLAGS) ./...

.PHONY: test-long
test-long: ## Longer variants: the crash test over 10 seeds per configuration
	$(GO) test -race -count=1 -timeout 60m -run 'Crash' ./engine/ -args -crash.seeds=10

# make test-stress: the packages (go list patterns), the copies of each
# package's tests that run at once, and how many times each copy runs them.
PKGS ?= ./...
COPIES ?= 3
COUNT ?= 2

.PHONY: test-stress
test-stress: ## Each package's race tests in COPIES copies at once (3), COUNT times each (2): the timing a loaded CI machine gives, to find flaky tests
	@dir=$$(mktemp -d); fail=0; \
	for pkg in $$($(GO) list $(PKGS)); do \
	  name=$${pkg//\//_}; \
	  $(GO) test -race -c -o "$$dir/$$name.test" "$$pkg"; \
	  [[ -f "$$dir/$$name.test" ]] || continue; \
	  pkgdir=$$($(GO) list -f '{{.Dir}}' "$$pkg"); \
	  for i in $$(seq $(COPIES)); do \
	    (cd "$$pkgdir" && "$$dir/$$name.test" -test.count=$(COUNT) -test.timeout=30m $(TESTFLAGS) >"$$dir/$$name.$$i.log" 2>&1) & \
	  done; \
	  ok=1; for i in $$(seq $(COPIES)); do wait -n || ok=0; done; \
	  if (( ok )); then echo "ok   $$pkg"; else \
	    echo "FAIL $$pkg"; fail=1; \
	    grep -h -A8 -e '^--- FAIL' -e '^panic:' "$$dir/$$name".*.log | head -60 || true; \
	  fi; \
	done; \
	rm -rf "$$dir"; exit $$fail

.PHONY: bench
bench: ## Short benchmark run (under 5 minutes): report in bench/results/latest.{md,json}
	$(GO) run ./cmd/ferry-bench --profile short --md $(RESULTS)/latest.md --json $(RESULTS)/latest.json
	@echo "report: $(RESULTS)/latest.md"

.PHONY: bench-full
bench-full: ## The whole benchmark matrix (about 7 minutes on 2 cores): bench/results/full.{md,json}
	$(GO) run ./cmd/ferry-bench --profile full --md $(RESULTS)/full.md --json $(RESULTS)/full.json
	@echo "report: $(RESULTS)/full.md"

.PHONY: bench-peers
bench-peers: redis-server ## Ferry, NATS JetStream and Centrifugo (memory and Redis engines) in one short run (builds the peers): bench/results/peers.{md,json}
	$(GO) run -C bench/peers ./cmd/ferry-bench-peers --profile short --md $(CURDIR)/$(RESULTS)/peers.md --json $(CURDIR)/$(RESULTS)/peers.json
	@echo "report: $(RESULTS)/peers.md"

.PHONY: bench-compare
bench-compare: ## A/B: ferryd at BASE (a git revision) against the working tree, each row alternately (ONLY=ingest,fanout,catchup,idle ROWS=text PAIRS=4)
	@test -n "$(BASE)" || { echo 'usage: make bench-compare BASE=<git revision> [ONLY=ingest,fanout,catchup,idle] [ROWS=text] [PAIRS=4]' >&2; exit 2; }
	base=$$(mktemp -d); trap 'rm -rf "$$base"' EXIT; \
	git archive --format=tar $(BASE) | tar -x -C "$$base"; \
	(cd "$$base" && $(GO) build -o ferryd ./cmd/ferryd); \
	$(GO) run ./cmd/ferry-bench --compare "$$base/ferryd" --only $(ONLY) --rows "$(ROWS)" --pairs $(PAIRS)

.PHONY: test-peers
test-peers: redis-server ## Tests of the peer adapters (builds nats-server and centrifugo from the module proxy; installs redis-server)
	$(GO) test -C bench/peers -race -count=1 -timeout 15m ./...

.PHONY: bench-go
bench-go: ## The engine's go benchmarks (durable append, catch-up read) on this disk
	$(GO) test -run '^$$' -bench . -benchtime $(BENCHTIME) ./engine/

.PHONY: fuzz
fuzz: ## Run every fuzz target for FUZZTIME each (default 30s)
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$f"; $(GO) test $$pkg -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME); \
	  done; \
	done

.PHONY: generate
generate: $(WEB)/node_modules/.installed ## Regenerate the Go and TypeScript code from proto/ and the demo page's bundle (pinned tools)
	rm -f proto/ferry/v1/*.pb.go proto/ferry/v1/ferryv1connect/*.connect.go
	$(BUF) generate
	rm -rf $(WEB)/src/gen
	$(BUF) generate --template buf.gen.web.yaml
	cd $(WEB) && npm run --silent build:demo

.PHONY: checkgenerate
checkgenerate: generate ## Fail if generated code is stale
	@if [ -n "$$(git status --porcelain -- proto $(WEB)/src/gen internal/webui/dist)" ]; then \
	  echo "generated code is stale; run 'make generate' and commit:"; git status --porcelain -- proto $(WEB)/src/gen internal/webui/dist; exit 1; \
	fi

.PHONY: lint
lint: ## go vet (here, and for Windows and macOS: the SDK and ferryd build there too), gofmt and buf lint
	$(GO) vet ./...
	GOOS=windows $(GO) vet ./clientsdk/... ./cmd/...
	GOOS=darwin $(GO) vet ./clientsdk/... ./cmd/...
	$(GO) vet -C internal/h2/conformance ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(BUF) lint

.PHONY: clean
clean: ## Remove built binaries (not the data folder)
	rm -rf $(BIN)
