# keybroker — build, run and test. `make test` is the test command CI runs.
GO      ?= go
BIN     ?= bin/keybroker
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)

.PHONY: all build test vet fmt run clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/keybroker

## test: gofmt, vet and every test, on the PostgreSQL at
## $$KEYBROKER_TEST_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres).
test: fmt vet
	$(GO) test -count=1 -race -timeout 20m ./...

vet:
	$(GO) vet ./...

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

## run: serve with the configuration in the environment (see README).
run: build
	$(BIN) serve

clean:
	rm -rf bin
