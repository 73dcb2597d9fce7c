#!/usr/bin/env bash
# baseline.sh REV measures `up` and a follower's heal on this checkout's
# binary beside the binary of REV (default: the commit before HEAD), on
# real local clusters, alternating in one run (BenchmarkBaseline), and
# prints each figure's median and its ratio to REV's: what a change costs,
# beside the machine's own noise. Figures only: nothing passes or fails.
set -euo pipefail
cd "$(dirname "$0")/.."
rev="${1:-HEAD~}"
count="${BENCH_COUNT:-5}"
: "${RAPTIFORMICA_CONSUL:=$(scripts/consul.sh)}"
export RAPTIFORMICA_CONSUL
work="$(mktemp -d)"
trap 'git worktree remove --force "$work/src" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git worktree add --detach "$work/src" "$rev" >/dev/null
(cd "$work/src" && CGO_ENABLED=0 go build -o "$work/raptiformica" ./cmd/raptiformica)
echo "baseline: $(git rev-parse --short "$rev") ($(git log -1 --format=%s "$rev"))"
RAPTIFORMICA_BASELINE="$work/raptiformica" go test -run '^$' -bench '^BenchmarkBaseline$' -benchtime "${count}x" -timeout 60m ./test/e2e/ |
	awk '/^Benchmark/ {
		for (i = 5; i < NF; i += 2) printf "  %-22s %s\n", $(i+1), $i
	} /^(ok|FAIL|PASS)/ || /_test.go:/ { print }'
