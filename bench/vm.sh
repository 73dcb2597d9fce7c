#!/usr/bin/env bash
# vm.sh measures, on a real local cluster of three servers with the qemu
# backend, and prints: the time from a description asking for one VM
# worker to its joining, beside the floor it cannot beat, measured in the
# same run: a bare boot of the same kernel and initramfs on the same
# accelerator (KVM where it works here, TCG otherwise; the log says which)
# to its first line of userspace.
# Figures only: nothing here passes or fails on time.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${RAPTIFORMICA_CONSUL:=$(scripts/consul.sh)}"
export RAPTIFORMICA_CONSUL
count="${BENCH_COUNT:-3}"
go test -run '^$' -bench '^BenchmarkVM$' -benchtime "${count}x" -timeout 60m -v ./test/e2e/ |
	awk '/^Benchmark/ {
		name = $1; sub(/-[0-9]+$/, "", name)
		printf "%s\n", name
		for (i = 3; i < NF; i += 2) if ($(i+1) ~ /_s$/) printf "  %-22s %s\n", $(i+1), $i
	} /iteration/ { sub(/^[ \t]+/, "  "); print } /^(ok|FAIL|PASS)/ || /_test.go:[0-9]+: [^i]/ { print }'
