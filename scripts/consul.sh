#!/usr/bin/env bash
# consul.sh [ARCH] prints the path of a Consul binary (>= 1.22) to use, building
# the pinned version into the cache when none is on PATH. Building takes
# minutes, so the cached binary is never rebuilt; a half-finished build never
# replaces it because the binary is moved into place only after `go build`
# succeeds.
#
# ARCH (Go's name: amd64, arm64, 386, arm for ARMv7) builds for another
# architecture, into linux-ARCH/ beside this machine's own, where the agent
# looks for it when it adopts a machine of that architecture.
set -euo pipefail

CONSUL_VERSION="${CONSUL_VERSION:-1.22.0}"
CACHE="${RAPTIFORMICA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/raptiformica}"
NATIVE="$(go env GOARCH)"
ARCH="${1:-$NATIVE}"
case "$ARCH" in
amd64 | arm64 | 386 | arm) ;;
*) echo "consul.sh: no build for architecture '$ARCH' (amd64, arm64, 386, arm)" >&2; exit 2 ;;
esac
BIN="$CACHE/consul-v$CONSUL_VERSION/consul"
if [ "$ARCH" != "$NATIVE" ]; then
	BIN="$CACHE/consul-v$CONSUL_VERSION/linux-$ARCH/consul"
fi

version_ok() {
	# "Consul v1.22.3" -> accept 1.22 and later.
	local v
	v="$("$1" version 2>/dev/null | sed -n 's/^Consul v\([0-9]*\)\.\([0-9]*\).*/\1 \2/p' | head -1)"
	[ -n "$v" ] || return 1
	set -- $v
	[ "$1" -gt 1 ] || { [ "$1" -eq 1 ] && [ "$2" -ge 22 ]; }
}

if [ -x "$BIN" ]; then
	echo "$BIN"
	exit 0
fi
if [ "$ARCH" = "$NATIVE" ] && onpath="$(command -v consul 2>/dev/null)" && version_ok "$onpath"; then
	echo "$onpath"
	exit 0
fi

echo "building Consul v$CONSUL_VERSION for linux/$ARCH into $BIN (once; about 8 minutes on 2 cores)" >&2
work="$(mktemp -d)"
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
dir="$(go mod download -json "github.com/hashicorp/consul@v$CONSUL_VERSION" |
	sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
[ -d "$dir" ] || { echo "consul.sh: go mod download gave no module folder" >&2; exit 1; }
cp -r "$dir" "$work/src"
chmod -R u+w "$work/src"
# The module's replace block points at sibling folders of the Consul repository
# that the module proxy does not ship; without it the published versions are used.
sed -i '/^replace (/,/^)/d' "$work/src/go.mod"
(
	cd "$work/src"
	CGO_ENABLED=0 GOFLAGS=-mod=mod GONOSUMDB=github.com/hashicorp/consul \
		GOOS=linux GOARCH="$ARCH" GOARM=7 go build -trimpath -ldflags='-s -w' -o "$work/consul" .
)
mkdir -p "$(dirname "$BIN")"
mv "$work/consul" "$BIN.tmp"
mv "$BIN.tmp" "$BIN"
echo "$BIN"
