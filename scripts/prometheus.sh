#!/usr/bin/env bash
# prometheus.sh prints the folder holding the pinned Prometheus server and
# promtool, building them into the cache once. Distribution packages often
# leave discovery mechanisms out (Debian's drops Consul's), and the shipped
# config discovers agents through Consul, so the tests use upstream's own,
# built lean: only the file, HTTP and Consul discovery mechanisms (about two
# minutes on 2 cores instead of ten with every cloud's SDK).
set -euo pipefail

# Prometheus 3.16 is published on the module proxy as v0.316.0.
PROMETHEUS_VERSION="${PROMETHEUS_VERSION:-0.316.0}"
CACHE="${RAPTIFORMICA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/raptiformica}"
DIR="$CACHE/prometheus-v$PROMETHEUS_VERSION"

if [ -x "$DIR/prometheus" ] && [ -x "$DIR/promtool" ]; then
	echo "$DIR"
	exit 0
fi

echo "building Prometheus v$PROMETHEUS_VERSION into $DIR (once; about 3 minutes on 2 cores)" >&2
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# The web UI's assets are not in the module; without the builtinassets tag
# the server still serves its API, which is all the tests read.
for cmd in prometheus promtool; do
	GOBIN="$work" CGO_ENABLED=0 go install -trimpath -ldflags='-s -w' \
		-tags remove_all_sd,enable_consul_sd \
		"github.com/prometheus/prometheus/cmd/$cmd@v$PROMETHEUS_VERSION" >&2
done
mkdir -p "$DIR"
# Moved into place only when both are built: a half-finished build never
# counts as cached.
mv "$work/promtool" "$DIR/promtool"
mv "$work/prometheus" "$DIR/prometheus"
echo "$DIR"
