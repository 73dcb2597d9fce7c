#!/usr/bin/env bash
# simulate.sh plays N agents' Consul traffic, as the agent makes it, against
# a real three-server Consul on loopback addresses (ACLs off), for each N of
# SIM_AGENTS, and prints beside the floor of the same Consul with no
# simulated traffic, measured in the same run:
#   leader_cpu             the Raft leader's Consul process (/proc/<pid>/stat)
#   probe_read/probe_write a consistent KV read and a KV write, p50/p99
#   sim_request            the simulated agents' non-blocking requests, p50/p99
#   watch_wakes            blocking queries answered with a change, by watch
#   pass_observe/pass_plan the leader's pass with N members
# What each simulated agent does, and what is not simulated, is in
# bench/simulate/main.go's doc comment. Figures only: nothing passes or
# fails on them. About (SIM_WARMUP + SIM_WINDOW) per size, plus the floor.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${RAPTIFORMICA_CONSUL:=$(scripts/consul.sh)}"
export RAPTIFORMICA_CONSUL
bin="$(mktemp -d)/simulate"
trap 'rm -rf "$(dirname "$bin")"' EXIT
go build -o "$bin" ./bench/simulate
"$bin" -agents "${SIM_AGENTS:-1000,5000}" -window "${SIM_WINDOW:-60s}" -warmup "${SIM_WARMUP:-15s}" \
	-churn "${SIM_CHURN:-15s}" ${SIM_FLAGS:-}
