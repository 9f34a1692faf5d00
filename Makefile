# weft — see README.md. Targets that touch the kernel need root.
GO      ?= go
BIN     ?= bin
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/weft-net/weft/internal/daemon.Version=$(VERSION) -X github.com/weft-net/weft/internal/weftctl.Version=$(VERSION) -X github.com/weft-net/weft/internal/flannelcni.Version=$(VERSION)
# CGO_ENABLED=0: nothing in weft needs C, and a static binary does not map
# libc and ld.so (-1.3 MiB of weftd's RSS, measured with bench/overlay).
# -trimpath: reproducible paths; it does not change RSS (nor would -s -w,
# whose sections are never loaded), so symbols stay for profiling.
BUILDFLAGS ?= -trimpath
CGO_ENABLED ?= 0
PREFIX  ?= /usr/local
DESTDIR ?=

.PHONY: all build deps lab test race fuzz bench clean

all: build

build:
	CGO_ENABLED=$(CGO_ENABLED) $(GO) build $(BUILDFLAGS) -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/weftd ./cmd/weftctl ./cmd/flannel

deps:
	./scripts/install-deps.sh

# The main job: a 3-host overlay in network namespaces with a real etcd,
# weftd on every host and containers pinging across hosts; torn down after.
lab: deps build
	$(BIN)/weftctl lab run

# The whole test suite (root: it programs the kernel in network namespaces),
# then the race detector over the packages that run goroutines (-race needs
# cgo, hence gcc in .ci/run), then a few seconds of every fuzz target.
RACE_PKGS ?= ./internal/dataplane/... ./internal/lease/... ./internal/daemon/... ./internal/rules/... ./internal/udpfwd/... ./internal/wgengine/...
RACE_TEST = CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 30m $(RACE_PKGS)
test: deps
	$(GO) test -count=1 -timeout 20m ./...
	$(RACE_TEST)
	./scripts/fuzz-smoke.sh 5s

race:
	$(RACE_TEST)

fuzz:
	./scripts/fuzz-smoke.sh 60s

bench: build
	$(GO) test -run '^$$' -bench . -benchtime 5x ./...

clean:
	rm -rf $(BIN)

# Install binaries, units and samples. PREFIX-relative paths are written into
# the unit; DESTDIR only prefixes where files land (for packaging). An
# existing /etc/sysconfig/flanneld is never overwritten.
BINDIR     ?= $(PREFIX)/bin
LIBEXECDIR ?= $(PREFIX)/libexec
UNITDIR    ?= $(PREFIX)/lib/systemd/system
SYSCONFDIR ?= /etc
# The CNI plugin goes where CNI runtimes look, /opt/cni/bin, whatever
# PREFIX; under the root SYSCONFDIR names, so that an install into a scratch
# root (SYSCONFDIR=<root>/etc, as dist's tests do) stays in it.
CNIBINDIR  ?= $(if $(filter %/etc,$(SYSCONFDIR)),$(SYSCONFDIR:%/etc=%),)/opt/cni/bin

.PHONY: install
install: build
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBEXECDIR)/flannel $(DESTDIR)$(UNITDIR)/docker.service.d $(DESTDIR)$(SYSCONFDIR)/sysconfig
	install -m 0755 $(BIN)/weftd $(BIN)/weftctl $(DESTDIR)$(BINDIR)/
	install -d $(DESTDIR)$(CNIBINDIR)
	install -m 0755 $(BIN)/flannel $(DESTDIR)$(CNIBINDIR)/flannel
	install -m 0755 dist/mk-docker-opts.sh $(DESTDIR)$(LIBEXECDIR)/flannel/mk-docker-opts.sh
	sed -e 's|/usr/bin/weft|$(BINDIR)/weft|g' dist/weftd.service > $(DESTDIR)$(UNITDIR)/weftd.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/weftd.service
	install -m 0644 dist/docker.service.d/flannel.conf $(DESTDIR)$(UNITDIR)/docker.service.d/flannel.conf
	[ -e $(DESTDIR)$(SYSCONFDIR)/sysconfig/flanneld ] || install -m 0644 dist/sysconfig/flanneld $(DESTDIR)$(SYSCONFDIR)/sysconfig/flanneld
