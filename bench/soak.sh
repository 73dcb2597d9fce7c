#!/usr/bin/env bash
# soak.sh runs the long chaos run (BenchmarkSoak): a local cluster of three
# servers and three workers loses machines for SOAK_ROUNDS rounds (default
# 20; the leader's every fourth round, two at once every fifth) and must
# heal each time with one spawn per death; a round then steps the wall
# clock forward by 3 minutes while a worker is dead, and only that worker
# may be replaced; and a last round makes the workers' first backend hang
# (start_instance never returns): the spawn gives its slot back at the
# provision timeout. It prints heal times beside the
# grace period every heal waits out; it fails only when the cluster does not
# heal or spawns twice for one need.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${RAPTIFORMICA_CONSUL:=$(scripts/consul.sh)}"
export RAPTIFORMICA_CONSUL
go test -run '^$' -bench 'Soak' -benchtime 1x -timeout 60m ./test/e2e/ |
	awk '/^Benchmark/ {
		name = $1; sub(/-[0-9]+$/, "", name)
		printf "%s\n", name
		for (i = 3; i < NF; i += 2) printf "  %-18s %s\n", $(i+1), $i
	} /round [0-9a-z]+:/ { sub(/^ +/, ""); print "  " $0 } /^(ok|FAIL|PASS)/ || /_test.go:[0-9]+: [^r]/ { print }'
