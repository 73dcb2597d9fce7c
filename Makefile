# raptiformica: the targets the README names.
#   make up     build, then boot a local self-healing virtual data center
#   make test   every test: unit, integration (real Consul), end-to-end,
#               after installing what they need (scripts/testdeps.sh)
#   make bench  benchmarks and measured scripts that print figures
#   make soak   the long chaos run (SOAK_ROUNDS rounds of killing machines)
#   make down   stop the local virtual data center
#   make package  .deb and .rpm in dist/ (agent, pinned Consul, systemd unit)
#   make fuzz   every fuzz target for FUZZTIME (default 2m) each

SHELL := /bin/bash
GO ?= go
BIN := bin/raptiformica
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
# The pinned Consul, built once into the cache (see scripts/consul.sh).
CONSUL = $(shell scripts/consul.sh)

.PHONY: all build build-archs consul up down test testdeps test-short vet bench soak clean package fuzz

all: build

# Static (no cgo), so that the same binary runs in the FROM-scratch node image.
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/raptiformica

consul:
	@scripts/consul.sh

up: build
	@consul="$$(scripts/consul.sh)" && RAPTIFORMICA_CONSUL="$$consul" $(BIN) up $(UP_FLAGS)

down: build
	$(BIN) down $(UP_FLAGS)

vet:
	@test -z "$$(gofmt -l . | tee /dev/stderr)" || { echo "gofmt: the files above need formatting"; exit 1; }
	$(GO) vet ./...

# The programs the tests run come from Debian's packages (testdeps: Chromium,
# debootstrap, zsh, fish, OpenSSH's client, systemd-analyze, pgrep, Docker),
# installed when missing, or are pinned and built once into the cache, like
# Consul: Prometheus and promtool. A test whose program is missing fails.
#
# The end-to-end tests are one package, test/e2e, which builds the binary
# once and runs its tests in one process (the cluster tests in parallel).
#
# The unit tests run again as a 32-bit build (GOARCH=386, which this kernel
# runs natively): an old desktop runs the same agent, and a whole number that
# fits 64 bits but not 32, or an unaligned 64-bit atomic, shows there first.
#
# The mesh package runs without the race detector: the yggdrasil library's
# peer listing (ironwood's Debug.GetPeers) reads a link's latency timestamps
# in one actor while another writes them, which -race reports on every run;
# the fields are a debug latency figure we do not read. Our own code there is
# a mutex and a channel.
test: testdeps vet
	@consul="$$(scripts/consul.sh)" && scripts/consul.sh arm64 >/dev/null && prom="$$(scripts/prometheus.sh)" && \
		PATH="$$prom:$$PATH" RAPTIFORMICA_CONSUL="$$consul" $(GO) test -race -count=1 -timeout 50m $$($(GO) list ./... | grep -v '/mesh$$') && \
		$(GO) test -count=1 ./mesh/ && \
		GOARCH=386 $(GO) test -short -count=1 ./...

testdeps:
	@scripts/testdeps.sh

# Unit tests only: no Consul, no processes.
test-short:
	$(GO) test -short -count=1 ./...

# Every fuzz target (a func FuzzXxx(f *testing.F) in a _test.go file, found
# by name so that a new one joins) runs for FUZZTIME, one after the other
# (they share the machine's cores), then a table says each one's executions
# and findings; the run fails if a target found an input that fails. A
# finding is written to its package's testdata/fuzz/FuzzXxx/: fix the code
# and keep the file, and `make test` runs it as a regression test from then
# on, as it runs the rest of the corpora.
#
# The fuzzer shrinks each new input it finds, for a minute by default: on
# the description parser (about a millisecond an input) that minute held
# a whole run on one input. FUZZMINIMIZETIME bounds it.
#
# Go 1.26's fuzz coordinator can fail a run that found nothing with a bare
# "context deadline exceeded" as FUZZTIME ends (Go issue 75804, fixed in
# 1.27): with no input written, that is reported as nothing found.
FUZZTIME ?= 2m
FUZZMINIMIZETIME ?= 5s
fuzz:
	@rows=(); failed=0; \
	for file in $$(grep -rlE --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*\(f \*testing\.F\)' . | sort); do \
		dir=$$(dirname "$$file"); \
		for name in $$(sed -nE 's/^func (Fuzz[A-Za-z0-9_]*)\(f \*testing\.F\).*/\1/p' "$$file"); do \
			echo "== $$dir $$name for $(FUZZTIME)"; \
			log=$$(mktemp); \
			$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZETIME) "$$dir/" >"$$log" 2>&1; rc=$$?; \
			grep -v '^fuzz: elapsed' "$$log"; \
			execs=$$(grep -oE 'execs: [0-9]+' "$$log" | tail -n 1 | grep -oE '[0-9]+'); \
			found=$$(sed -n 's/.*Failing input written to //p' "$$log" | head -n 1); \
			if [ $$rc -eq 0 ]; then result="nothing found"; \
			elif [ -n "$$found" ]; then result="FOUND $$dir/$$found"; failed=1; \
			elif grep -qx '[[:space:]]*context deadline exceeded' "$$log"; then result="nothing found (Go 1.26's end-of-run race, Go issue 75804)"; \
			else result="FAILED (exit $$rc, see above)"; failed=1; fi; \
			rows+=("$$(printf '%-22s %-20s %12s  %s' "$$dir" "$$name" "$${execs:-0}" "$$result")"); \
			rm -f "$$log"; \
		done; \
	done; \
	echo; printf '%-22s %-20s %12s  %s\n' package target executions result; \
	printf '%s\n' "$${rows[@]}"; \
	exit $$failed

bench: build testdeps
	$(GO) test -run '^$$' -bench . -benchmem ./reconcile/
	$(GO) test -run '^$$' -bench . -benchmem ./mesh/peering/
	@consul="$$(scripts/consul.sh)" && RAPTIFORMICA_CONSUL="$$consul" $(GO) test -run '^$$' -bench 'LeadershipMove' -benchtime 10x ./daemon/
	@consul="$$(scripts/consul.sh)" && RAPTIFORMICA_CONSUL="$$consul" bench/heal.sh
	@consul="$$(scripts/consul.sh)" && RAPTIFORMICA_CONSUL="$$consul" bench/elastic.sh
	@consul="$$(scripts/consul.sh)" && RAPTIFORMICA_CONSUL="$$consul" bench/vm.sh
	@consul="$$(scripts/consul.sh)" && RAPTIFORMICA_CONSUL="$$consul" bench/mesh.sh
	@consul="$$(scripts/consul.sh)" && RAPTIFORMICA_CONSUL="$$consul" bench/simulate.sh
	@consul="$$(scripts/consul.sh)" && RAPTIFORMICA_CONSUL="$$consul" bench/scale.sh

# Package versions must sort and start with a digit; until releases are
# tagged, the commit names the build.
PKG_VERSION ?= 0.1.0+git$(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)

# The architectures `make package` builds for, by Go's names (arm is ARMv7):
# `make test` builds amd64 and arm64, the two its tests run; 386 and arm take
# a Consul build of about 8 minutes each, once (ARCHS="amd64 arm64 386 arm").
ARCHS ?= amd64 arm64

# The agent for each of ARCHS in bin/linux-<arch>/, where adoption looks for
# the binaries of a machine of another architecture (static: no cgo).
build-archs:
	@for a in $(ARCHS); do \
		CGO_ENABLED=0 GOOS=linux GOARCH=$$a GOARM=7 $(GO) build -trimpath -ldflags "-X main.version=$(VERSION)" \
			-o bin/linux-$$a/raptiformica ./cmd/raptiformica || exit 1; \
	done

# Per architecture: dist/linux-<arch>/ holds the agent and the pinned Consul
# (RAPTIFORMICA_ARTIFACTS=dist lets an agent adopt machines of each), and
# the .deb and .rpm are made from it (nfpm reads dist/stage, which points
# at it in turn; nfpm's "arm7" is ARMv7).
package: build build-archs
	@nfpm="$$(scripts/nfpm.sh)" && rm -rf dist && mkdir -p dist && \
	for a in $(ARCHS); do \
		consul="$$(scripts/consul.sh $$a)" && mkdir -p dist/linux-$$a && \
		cp bin/linux-$$a/raptiformica "$$consul" dist/linux-$$a/ && ln -sfn linux-$$a dist/stage || exit 1; \
		pkgarch=$$a; if [ $$a = arm ]; then pkgarch=arm7; fi; \
		for format in deb rpm; do \
			PKG_ARCH=$$pkgarch PKG_VERSION="$(PKG_VERSION)" \
				"$$nfpm" package --config packaging/nfpm.yaml --packager $$format --target dist/ || exit 1; \
		done; \
	done; rm -f dist/stage

soak: build
	@consul="$$(scripts/consul.sh)" && RAPTIFORMICA_CONSUL="$$consul" bench/soak.sh

clean:
	rm -rf bin dist
