#!/usr/bin/env bash
# rootfs.sh prints the path of a minimal Debian root filesystem (a tarball)
# that tests import as a Docker image: a fresh Debian to install packages
# into, and, with its OpenSSH server, sudo and systemd, the machines the SSH
# adoption tests adopt. It is made once with debootstrap from the Debian mirror this
# machine's apt already uses, and cached.
set -euo pipefail

SUITE="${ROOTFS_SUITE:-bookworm}"
CACHE="${RAPTIFORMICA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/raptiformica}"
# What the tests need beyond minbase: a real sshd to adopt through, sudo for
# the non-root user case, systemd for the machines that boot it as PID 1, git
# for the machines that provision themselves from a repository.
INCLUDE="openssh-server,sudo,systemd,systemd-sysv,git"
OUT="$CACHE/rootfs-$SUITE-minbase-$(echo "$INCLUDE" | tr , -).tar"

if [ -s "$OUT" ]; then
	echo "$OUT"
	exit 0
fi

# The mirror apt is configured with: deb822 sources first, then the one-line
# format. No host name is written here.
mirror=""
for f in /etc/apt/sources.list.d/*.sources; do
	[ -e "$f" ] || continue
	mirror="$(awk -v suite="$SUITE" '
		/^URIs:/ { uri = $2 }
		/^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) { print uri; exit } }' "$f")"
	[ -n "$mirror" ] && break
done
if [ -z "$mirror" ] && [ -e /etc/apt/sources.list ]; then
	mirror="$(awk -v suite="$SUITE" '$1 == "deb" && $3 == suite { print $2; exit }' /etc/apt/sources.list)"
fi
[ -n "$mirror" ] || { echo "rootfs.sh: no apt source for $SUITE in /etc/apt" >&2; exit 1; }
command -v debootstrap >/dev/null || {
	echo "rootfs.sh: debootstrap is missing (apt-get install debootstrap; make test does, through scripts/testdeps.sh)" >&2
	exit 1
}

echo "making a $SUITE root filesystem with debootstrap into $OUT (once; a minute or two)" >&2
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$work/root" "$mirror" >"$work/log" 2>&1 || {
	tail -20 "$work/log" >&2
	exit 1
}
rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*
# Host keys are made by each test host when it starts, never shared.
rm -f "$work/root/etc/ssh/ssh_host_"*
mkdir -p "$CACHE"
tar -C "$work/root" -cf "$OUT.tmp" .
mv "$OUT.tmp" "$OUT"
echo "$OUT"
