#!/usr/bin/env bash
# nfpm.sh prints the path of the pinned nfpm (the packager), installed once
# into the cache from the Go module proxy.
set -euo pipefail
NFPM_VERSION="${NFPM_VERSION:-2.45.2}"
CACHE="${RAPTIFORMICA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/raptiformica}"
BIN="$CACHE/nfpm-v$NFPM_VERSION/nfpm"
if [ ! -x "$BIN" ]; then
	echo "installing nfpm v$NFPM_VERSION into $BIN (once)" >&2
	GOBIN="$(dirname "$BIN")" CGO_ENABLED=0 go install -trimpath -ldflags='-s -w' \
		"github.com/goreleaser/nfpm/v2/cmd/nfpm@v$NFPM_VERSION" >&2
fi
echo "$BIN"
