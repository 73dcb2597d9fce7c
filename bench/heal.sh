#!/usr/bin/env bash
# heal.sh measures, on real local clusters, and prints:
#   heal time (SIGKILL of a follower's machine until its replacement is a
#   joined voter and the dead one is reaped) beside the floor it cannot beat,
#   measured in the same run: Consul's failure detection plus a bare node
#   start; the same for the leader's machine, with the time the leader lock
#   took to move beside the detection it cannot beat; the same for
#   a `docker kill`ed container (floor: detection plus a bare container start);
#   reaction time from `platform apply` to the leader's first spawn intent;
#   idle RSS and CPU of the agents and of their Consuls; recovery after
#   losing two of three servers beside a fresh `up` of three; `up` and heal
#   time with Consul's ACLs and TLS beside a binary built without them.
# Figures only: nothing here passes or fails on time.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${RAPTIFORMICA_CONSUL:=$(scripts/consul.sh)}"
export RAPTIFORMICA_CONSUL
count="${BENCH_COUNT:-5}" # p50 and p90 of heal and recovery need five runs
go test -run '^$' -bench 'Heal|DockerHeal|HealLeader|Reaction|Idle|Recovery|Security' -benchtime "${count}x" -timeout 60m ./test/e2e/ |
	awk '/^Benchmark/ {
		name = $1; sub(/-[0-9]+$/, "", name)
		printf "%s\n", name
		for (i = 5; i < NF; i += 2) printf "  %-14s %s\n", $(i+1), $i
	} /^(ok|FAIL|PASS)/ || /_test.go:/ { print }'
