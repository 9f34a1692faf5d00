# weft — see README.md. Targets that touch the kernel need root.
GO      ?= go
BIN     ?= bin
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/weft-net/weft/internal/daemon.Version=$(VERSION) -X github.com/weft-net/weft/internal/weftctl.Version=$(VERSION)
PREFIX  ?= /usr/local
DESTDIR ?=

.PHONY: all build deps lab test fuzz bench clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/weftd ./cmd/weftctl

deps:
	./scripts/install-deps.sh

# The main job: a 3-host overlay in network namespaces with a real etcd,
# weftd on every host and containers pinging across hosts; torn down after.
lab: deps build
	$(BIN)/weftctl lab run

# The whole test suite (root: it programs the kernel in network namespaces).
test: deps
	$(GO) test -count=1 -timeout 20m ./...
	./scripts/fuzz-smoke.sh 5s

fuzz:
	./scripts/fuzz-smoke.sh 60s

bench: build
	$(GO) test -run '^$$' -bench . -benchtime 5x ./...

clean:
	rm -rf $(BIN)
