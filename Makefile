# keybroker — build, run and test. `make test` is the test command CI runs.
GO      ?= go
BIN     ?= bin/keybroker
# VERSION: the vX.Y.Z tag at HEAD, else a Go pseudo-version (v0.0.0-<UTC
# commit time>-<12 hex digits of the commit>, or vX.Y.(Z+1)-0.<time>-<hash>
# after the newest tag vX.Y.Z), "+dirty" with uncommitted changes; "dev"
# outside a git checkout. internal/cmd/release names it. Both variables are
# computed once, and only by the targets that use them.
VERSION ?= $(eval VERSION := $(shell $(GO) run ./internal/cmd/release version 2>/dev/null || echo dev))$(VERSION)
COMMIT  ?= $(eval COMMIT := $(shell git rev-parse HEAD 2>/dev/null))$(COMMIT)
# The release binaries' linker flags (internal/cmd/release checks that they agree).
LDFLAGS  = -s -w -buildid= -X main.version=$(VERSION) -X main.commit=$(COMMIT)

.PHONY: all build build-pkcs11 version release test test-stress vet fmt run demo clean bench bench-micro bench-rewrap bench-outage bench-scale fuzz

all: build

## build: a static binary (CGO_ENABLED=0) with every KEK provider but
## PKCS#11: a pkcs11: KEK URI is refused with a message naming build-pkcs11.
build:
	CGO_ENABLED=0 $(GO) build -trimpath -buildvcs=false -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/keybroker

## version: print the version `make build` and `make release` stamp.
version:
	@echo $(VERSION)

## release: reproducible static binaries for linux and darwin on amd64 and
## arm64 in dist/ (keybroker_<version>_<os>_<arch>), a CycloneDX SBOM of
## each (.cdx.json) and SHA256SUMS. Refuses a checkout with uncommitted
## changes unless ALLOW_DIRTY=1. See "Releases" in the README.
release:
	$(GO) run ./internal/cmd/release dist -go $(GO) -out dist $(if $(ALLOW_DIRTY),-allow-dirty)

## build-pkcs11: the same binary with the PKCS#11 KEK provider for HSMs
## (docs/providers.md#pkcs11-hardware-security-modules). It needs cgo and
## a C compiler; the binary links the C library dynamically and loads the
## HSM vendor's module (module-path= in the URI) at run time. The container
## equivalent: docker build --target pkcs11 -t keybroker:pkcs11 .
build-pkcs11:
	CGO_ENABLED=1 $(GO) build -trimpath -buildvcs=false -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/keybroker

## test: gofmt, vet and every test, on the PostgreSQL at
## $$KEYBROKER_TEST_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres).
test: fmt vet
	$(GO) test -count=1 -race -timeout 20m ./...

## test-stress: the whole suite STRESS_RUNS times in a row (default 3) with
## STRESS_HOGS busy processes beside it (default 2, one per core here);
## reports each test that failed at least once and fails if any did.
STRESS_RUNS ?= 3
STRESS_HOGS ?= 2
test-stress: fmt vet
	$(GO) run ./internal/cmd/teststress -runs $(STRESS_RUNS) -hogs $(STRESS_HOGS)

vet:
	$(GO) vet ./...

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

## bench: the load benchmark (docs/benchmarks.md): the real binary on a fresh
## PostgreSQL database, local-kms and the embedded store, GET /key at several
## concurrencies beside the pgbench floor of the same SQL, then the Go
## micro-benchmarks. Takes about 10 minutes; reports, never fails on a time.
## KEYBROKER_BENCH_{USERS,WARMUP,DURATION,CONNS,ROWS,OUT,MICRO} tune it;
## KEYBROKER_BENCH_PEER_{URL,TOKEN,KEY} add a Vault/OpenBao Transit peer.
## Closed-loop steps are driven by wrk (Debian's C generator), installed here
## when apt-get can; without it the Go generator drives them and the table
## says so (KEYBROKER_BENCH_GENERATOR=go asks for it).
bench:
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get install -y -q wrk >/dev/null; } || \
		echo "bench: wrk is not installed (apt-get install wrk); the Go generator drives every step, and the table says so"
	KEYBROKER_BENCH=1 $(GO) test -count=1 -run '^TestBenchTable$$' -timeout 30m -v ./internal/bench

## bench-rewrap: the re-wrap job on 100 000 rows next to a plain UPDATE of
## the same rows (docs/rotation.md records the numbers). About a minute.
## KEYBROKER_BENCH_REWRAP_{ROWS,BATCH} tune it.
bench-rewrap:
	KEYBROKER_BENCH_REWRAP=1 $(GO) test -count=1 -run '^$$' -bench '^BenchmarkRewrap$$' -benchtime 1x -timeout 20m ./broker

## bench-outage: a replica started while one of the two KMSes its KEK list
## names is down (refusing, or hanging): time to ready and failed fetches
## (docs/benchmarks.md, last section). About a minute.
bench-outage:
	KEYBROKER_BENCH_OUTAGE=1 $(GO) test -count=1 -run '^TestBenchOutage$$' -timeout 10m -v ./internal/bench
## bench-scale: GET /key on an empty database, then after filling 1 000 000
## vaults and 100 000 000 audit rows over 20 days by SQL (about 35 GB of
## disk and 75 minutes here); also audit/kek status, a readiness poll, sealing the filled
## rows and `audit verify` on them, dropping the partitions past a
## retention while fetches run, and the online move of an
## unpartitioned table that size (TestBenchScaleMove). Writes its sections
## of docs/benchmarks.md. KEYBROKER_BENCH_SCALE_{VAULTS,ROWS,DAYS,USERS,CONNS,
## DURATION,OUT} size it; `make test` runs it small.
bench-scale:
	KEYBROKER_BENCH_SCALE=1 $(GO) test -count=1 -run '^TestBenchScale(Move)?$$' -timeout 24h -v ./internal/bench

## bench-micro: the Go micro-benchmarks of the hot pieces, with allocations
## (the pgstore and internal/bench ones use the test PostgreSQL).
MICRO_PKGS := ./kekproviders/localkek ./broker ./vaultapi/jwtauth ./vaultapi ./pgstore ./internal/bench
bench-micro:
	$(GO) test -run '^$$' -bench . -benchmem $(MICRO_PKGS)

## fuzz: every fuzz target for $(FUZZTIME) each, one at a time (go test
## -fuzz takes one target of one package per run). `make test` already runs
## the committed corpora (testdata/fuzz/<FuzzName>/) and seeds; this explores.
## A failing input is written to that package's testdata/fuzz: commit it.
FUZZTIME ?= 20s
FUZZ_TARGETS := \
	./vaultapi:FuzzRequest ./vaultapi:FuzzRecoveryWrapBody ./vaultapi:FuzzZeroKnowledgeBody \
	./vaultapi:FuzzServiceRoutes ./vaultapi:FuzzDecodeBase64Field ./vaultapi:FuzzMissionGrantBody \
	./grant:FuzzCompareUTF16 ./grant/worker:FuzzParseGrant ./vaultapi/jwtauth:FuzzVerify \
	./kekproviders:FuzzParseURI ./kekproviders:FuzzOpenLocal ./migrations:FuzzParse \
	./client:FuzzParseRecoveryCode
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "== $$name ($$pkg, $(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) $$pkg; \
	done

## run: keybroker in dev mode on 127.0.0.1:3001: the embedded store and a
## generated KEK in ./.keybroker, a built-in token issuer
## (get a token with: bin/keybroker dev token --user alice).
## For a production-like run use: $(BIN) serve (configured by the environment).
run: build
	$(BIN) serve --dev

## demo: start a dev server and walk the whole story with the Go client.
demo: build
	$(GO) run ./cmd/keybroker-demo --binary $(BIN)

clean:
	rm -rf bin dist
