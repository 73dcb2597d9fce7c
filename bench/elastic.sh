#!/usr/bin/env bash
# elastic.sh measures, on real local clusters, and prints:
#   heal with one spare (the spare promoted) beside heal without (a
#   replacement spawned) and beside the floor a replacement cannot beat,
#   measured in the same run: Consul's failure detection plus a bare node
#   start;
#   the time from jobs pushed onto a Redis list past a worker's target to a
#   new live worker, beside its floor: the signal's evaluation interval plus
#   Prometheus's scrape interval plus a bare node start.
# Figures only: nothing here passes or fails on time.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${RAPTIFORMICA_CONSUL:=$(scripts/consul.sh)}"
export RAPTIFORMICA_CONSUL
PATH="$(scripts/prometheus.sh):$PATH"
count="${BENCH_COUNT:-5}" # p50 and p90 need five runs
go test -run '^$' -bench '^Benchmark(Spare|Signal)$' -benchtime "${count}x" -timeout 60m ./test/e2e/ |
	awk '/^Benchmark/ {
		name = $1; sub(/-[0-9]+$/, "", name)
		printf "%s\n", name
		for (i = 5; i < NF; i += 2) printf "  %-22s %s\n", $(i+1), $i
	} /^(ok|FAIL|PASS)/ || /_test.go:/ { print }'
