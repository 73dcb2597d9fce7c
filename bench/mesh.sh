#!/usr/bin/env bash
# mesh.sh measures the overlay mesh between two containers on one Docker
# network, beside the bare network between the same two containers, in one
# run (the bare figures are the floor: the overlay rides on that network):
#   rtt_p50_us, rtt_p99_us   round trip of a 64-byte TCP echo
#   throughput_mbit          one TCP stream for 3 s
# Figures only: nothing here passes or fails on time.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${RAPTIFORMICA_CONSUL:=$(scripts/consul.sh)}"
export RAPTIFORMICA_CONSUL
count="${BENCH_COUNT:-3}"
go test -run '^$' -bench 'Mesh' -benchtime "${count}x" -timeout 20m ./test/e2e/ |
	awk '/^Benchmark/ {
		name = $1; sub(/-[0-9]+$/, "", name)
		printf "%s (mean of %s runs)\n", name, $2
		for (i = 5; i < NF; i += 2) printf "  %-26s %s\n", $(i+1), $i
	} /^(ok|FAIL|PASS)/ || /_test.go:/ { print }'
