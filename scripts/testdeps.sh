#!/usr/bin/env bash
# testdeps.sh installs, from Debian's packages, the programs the tests run
# that `make test` does not build itself (those are pinned and cached:
# Consul, Prometheus, the Debian root filesystem). `make test` runs it first,
# so that on a fresh Debian machine nothing is missing and no test has a
# reason to skip:
#   chromium         loads the status page (TestStatusPage)
#   debootstrap      makes the fresh Debian the package is installed into and
#                    the adopted machines boot (scripts/rootfs.sh), and the
#                    VMs' root filesystem (scripts/vmimage.sh)
#   qemu-system-x86_64, qemu-img
#                    run the qemu backend's VMs (TestVM...)
#   qemu-system-aarch64, qemu-aarch64-static (with binfmt-support)
#                    run the emulated arm64 machine (TestArch...), and make its
#                    root filesystem by running arm64 programs under emulation
#   mkfs.ext4, ip    make the VMs' disk image, their bridge and taps
#   zsh, fish        run the completion scripts (TestCompletion)
#   ssh-agent, -add  the adoption test logs in through an SSH agent
#   systemd-analyze  checks the shipped unit (TestSystemdUnit)
#   pgrep            finds processes left behind (TestSelfHealing)
#   docker           the engine and CLI the container tests drive
#   redis-server, redis-cli, prometheus-redis-exporter
#                    the queue a signal scales workers on (TestElasticSignalRedis)
# It installs only what is missing, and says nothing when nothing is.
set -euo pipefail

# program:package
need=()
for pair in chromium:chromium debootstrap:debootstrap zsh:zsh fish:fish \
	ssh-agent:openssh-client ssh-add:openssh-client systemd-analyze:systemd \
	pgrep:procps docker:docker.io redis-server:redis-server redis-cli:redis-tools \
	prometheus-redis-exporter:prometheus-redis-exporter \
	qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils mkfs.ext4:e2fsprogs ip:iproute2 \
	qemu-system-aarch64:qemu-system-arm qemu-aarch64-static:qemu-user-static update-binfmts:binfmt-support; do
	command -v "${pair%%:*}" >/dev/null && continue
	pkg="${pair#*:}"
	[[ " ${need[*]-} " == *" $pkg "* ]] || need+=("$pkg")
done

if [ ${#need[@]} -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "testdeps.sh: the tests need these Debian packages, and only root can install them: ${need[*]}" >&2
		echo "testdeps.sh: run as root, or: sudo apt-get install --no-install-recommends ${need[*]}" >&2
		exit 1
	fi
	echo "testdeps.sh: installing ${need[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q >&2
	apt-get install -y -q --no-install-recommends "${need[@]}" >&2
fi

# The kernel runs arm64 programs through qemu-user only with its handler
# registered (binfmt_misc), which a machine whose init never mounted it lacks.
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "testdeps.sh: no binfmt handler for arm64 is registered, and only root can register it (update-binfmts --enable qemu-aarch64)" >&2
		exit 1
	fi
	mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
	update-binfmts --enable qemu-aarch64 >&2
fi

# The container tests need an engine that answers, not only its command.
if ! out="$(timeout 30 docker version --format '{{.Server.Version}}' 2>&1)"; then
	echo "testdeps.sh: no Docker engine answers (docker version: ${out##*$'\n'}); the container tests need one running (systemctl start docker)" >&2
	exit 1
fi
