#!/usr/bin/env bash
# scale.sh boots 3 servers and RF_SCALE_WORKERS (default 100) workers on the
# local backend, as a user would (`up`, at most 10 spawns at once), and
# prints, beside the floor of the same number of bare Consul agents with no
# raptiformica agent, measured first in the same run:
#   converge_s                  `up` until every machine is a joined member
#   cpu_%/machine, rss_MB/machine  agent + its Consul at rest (a minute after converging), per machine
#   floor_cpu_%/machine, floor_rss_MB/machine  a bare Consul agent at rest
#   floor_secured_*             the same, secured as the agent runs Consul
#                               (gossip encryption, ACLs, TLS)
#   agent_cpu_%/machine         the raptiformica agent's own share
#   server_consul_cpu_%, client_consul_cpu_%  per role, beside
#                               floor_secured_server/client_cpu_%
#   pass_ms                     the leader's last reconcile pass (status)
#   heal_s                      SIGKILL of a worker until it is replaced
#   server_leads                1 when a Consul server holds the leader lock
# CPU is measured over two minutes each, floors and cluster alike. Figures
# only: nothing here passes or fails on time. About 11 minutes;
# heavy: about 200
# processes and 14 GB at 100 workers. Whatever it started is stopped on
# exit, failure or interrupt included (`raptiformica down`, the bare agents
# killed by the PIDs it wrote).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${RAPTIFORMICA_CONSUL:=$(scripts/consul.sh)}"
export RAPTIFORMICA_CONSUL
RF_SCALE_DIR="$(mktemp -d)"
export RF_SCALE_DIR
rf="$(mktemp -d)/raptiformica"
CGO_ENABLED=0 go build -o "$rf" ./cmd/raptiformica
cleanup() {
	if [ -f "$RF_SCALE_DIR/bare.pids" ]; then
		while read -r pid; do kill -9 "$pid" 2>/dev/null || true; done <"$RF_SCALE_DIR/bare.pids"
	fi
	if [ -d "$RF_SCALE_DIR/machines" ]; then
		"$rf" down --dir "$RF_SCALE_DIR" >/dev/null 2>&1 || true
	fi
	rm -rf "$RF_SCALE_DIR" "$(dirname "$rf")"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
go test -run '^$' -bench 'Scale' -benchtime 1x -timeout 60m ./test/e2e/ |
	awk '/^Benchmark/ {
		name = $1; sub(/-[0-9]+$/, "", name)
		printf "%s\n", name
		for (i = 5; i < NF; i += 2) printf "  %-22s %s\n", $(i+1), $i
	} /^(ok|FAIL|PASS)/ || /_test.go:/ || /machines: converged/ { print }'
