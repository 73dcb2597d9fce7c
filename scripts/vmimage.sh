#!/usr/bin/env bash
# vmimage.sh [DEB] prints the folder of a QEMU virtual machine image:
#
#   vmlinuz      Debian's kernel, booted directly (no bootloader)
#   initrd.img   its initramfs (virtio and ext4 are modules in Debian's kernel)
#   disk.img     the root filesystem, raw ext4; each machine boots a
#                copy-on-write qcow2 overlay of it, never the file itself
#
# With DEB, the image is the qemu backend's (its `image_dir` setting): the
# raptiformica package DEB installed, its agent started from the node config
# the backend hands in. Without DEB, it is a bare Debian machine to adopt over
# SSH: no agent, an OpenSSH server, and root's authorized key handed in the
# same way. VM_ARCH=arm64 makes an arm64 one (booted by qemu-system-aarch64
# under emulation; debootstrap's second stage runs through qemu-user-static's
# binfmt handler).
#
# Two caches, both under the raptiformica cache folder:
#   vmroot-<suite>-<hash>.tar  Debian with its kernel, systemd and the guest
#                              agent, made once with debootstrap from the mirror
#                              this machine's apt already uses (a few minutes;
#                              more for arm64, under emulation)
#   vm-<deb sha256>/           that root with DEB installed (vm-ssh-<arch>-<hash>/
#                              without): made in about half a minute, offline;
#                              the newest two of each kind are kept
#
# What the image adds to Debian, and why:
#   raptiformica-fwcfg.service  copies what the VM was handed through QEMU's
#                              firmware config (fw_cfg, which only this VM reads):
#                              the node config to /etc/raptiformica/agent.json,
#                              root's authorized key to /root/.ssh/authorized_keys
#   raptiformica.service        the package's unit, enabled, with a drop-in that
#                              starts it only when a node config exists: a VM
#                              made by hand boots without one, and its operator
#                              runs `raptiformica join --token …` and starts it
#   ssh.service                 (bare image) with host keys made at first boot:
#                              every machine has its own, none is in the image
#   systemd-networkd            configured from the kernel command line's `ip=`
#                              (systemd-network-generator): the backend gives
#                              each VM its address there, no DHCP server needed
#   qemu-guest-agent            the host's root can run a command in its own VMs
#                              (a socket only root on the host opens); the tests
#                              read `systemctl show` through it
set -euo pipefail

DEB="${1:-}"
[ -z "$DEB" ] || [ -s "$DEB" ] || { echo "vmimage.sh: no package at $DEB" >&2; exit 1; }
ARCH="${VM_ARCH:-amd64}"
case "$ARCH" in
amd64) QEMU_USER="" ;;
arm64) QEMU_USER=aarch64 ;;
*) echo "vmimage.sh: VM_ARCH is amd64 or arm64, not '$ARCH'" >&2; exit 1 ;;
esac
SUITE="${VM_SUITE:-bookworm}"
CACHE="${RAPTIFORMICA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/raptiformica}"
INCLUDE="linux-image-$ARCH,initramfs-tools,systemd,systemd-sysv,udev,dbus,kmod,iproute2,procps,qemu-guest-agent"
if [ -z "$DEB" ]; then
	# What an adoption needs and its test reads: sshd, and file(1).
	INCLUDE="$INCLUDE,openssh-server,file"
fi
# The amd64 root keeps the name it had before there were others.
if [ "$ARCH" = amd64 ]; then
	BASE="$CACHE/vmroot-$SUITE-$(echo "$INCLUDE" | sha256sum | cut -c1-12).tar"
else
	BASE="$CACHE/vmroot-$SUITE-$ARCH-$(echo "$INCLUDE" | sha256sum | cut -c1-12).tar"
fi
SIZE="${VM_DISK_SIZE:-3G}"

if [ -n "$QEMU_USER" ] && [ ! -e "/proc/sys/fs/binfmt_misc/qemu-$QEMU_USER" ]; then
	echo "vmimage.sh: an $ARCH root filesystem is made by running its programs under emulation, and no binfmt handler for $ARCH is registered (apt-get install qemu-user-static binfmt-support; make test does, through scripts/testdeps.sh)" >&2
	exit 1
fi
for tool in debootstrap mkfs.ext4; do
	command -v "$tool" >/dev/null || {
		echo "vmimage.sh: $tool is missing (apt-get install debootstrap e2fsprogs; make test does, through scripts/testdeps.sh)" >&2
		exit 1
	}
done
[ "$(id -u)" -eq 0 ] || { echo "vmimage.sh: debootstrap and chroot need root" >&2; exit 1; }

# What is cached here is extracted and chrooted into as root, and booted
# with every VM's credentials: it must be root's alone.
trusted() {
	local f="$1" owner mode
	read -r owner mode < <(stat -c '%u %a' "$f")
	if [ "$owner" != 0 ] || [ $((8#$mode & 8#022)) -ne 0 ]; then
		echo "vmimage.sh: $f is not root's alone (owner $owner, mode $mode): refusing to build VM images from it" >&2
		exit 1
	fi
}
mkdir -p "$CACHE"
trusted "$CACHE"
# One build at a time: two would share the temporary names.
exec 9>"$CACHE/.vmimage.lock"
flock 9

if [ -n "$DEB" ]; then
	sum="$(sha256sum "$DEB" | cut -c1-16)"
	kind=vm
else
	# A bare image changes with this script and the root it is made from:
	# the root's name says what went into it.
	sum="$ARCH-$(cat "$0" <(basename "$BASE") | sha256sum | cut -c1-16)"
	kind=vm-ssh
fi
OUT="$CACHE/$kind-$sum"
if [ -s "$OUT/disk.img" ]; then
	trusted "$OUT"
	trusted "$OUT/disk.img"
	touch "$OUT"
	echo "$OUT"
	exit 0
fi

work="$(mktemp -d)"
cleanup() {
	for m in dev/pts dev proc sys; do
		mountpoint -q "$work/root/$m" 2>/dev/null && umount -l "$work/root/$m"
	done
	rm -rf --one-file-system "$work"
}
trap cleanup EXIT

if [ ! -s "$BASE" ]; then
	# The mirror apt is configured with (no host name is written here).
	# A stanza with the suite and the main component: Debian's own, not
	# a third party's repository for the same suite.
	mirror=""
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -e "$f" ] || continue
		mirror="$(awk -v suite="$SUITE" '
			/^[[:space:]]*$/ { uri = ""; hit = 0; main = 0; next }
			/^URIs:/ { uri = $2 }
			/^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) hit = 1 }
			/^Components:/ { for (i = 2; i <= NF; i++) if ($i == "main") main = 1 }
			uri != "" && hit && main { print uri; exit }' "$f")"
		[ -n "$mirror" ] && break
	done
	if [ -z "$mirror" ] && [ -e /etc/apt/sources.list ]; then
		mirror="$(awk -v suite="$SUITE" '$1 == "deb" && $3 == suite { print $2; exit }' /etc/apt/sources.list)"
	fi
	[ -n "$mirror" ] || { echo "vmimage.sh: no apt source for $SUITE in /etc/apt" >&2; exit 1; }
	echo "making a $SUITE $ARCH VM root filesystem with debootstrap into $BASE (once; a few minutes, more under emulation)" >&2
	# No initramfs yet (INITRD=No, which the kernel's hooks honour): the
	# image makes the one it boots, of a few modules; Debian's of every
	# driver takes minutes more to make, most of all under emulation.
	INITRD=No debootstrap --arch="$ARCH" --variant=minbase --include="$INCLUDE" "$SUITE" "$work/root" "$mirror" >"$work/log" 2>&1 || {
		tail -20 "$work/log" >&2
		exit 1
	}
	rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*
	mkdir -p "$CACHE"
	tar -C "$work/root" -cf "$BASE.tmp" .
	mv "$BASE.tmp" "$BASE"
	rm -rf "$work/root"
fi

echo "making a VM image ${DEB:+with $(basename "$DEB") }into $OUT" >&2
trusted "$BASE"
mkdir -p "$work/root"
tar -C "$work/root" -xf "$BASE"
root="$work/root"
# dpkg's maintainer scripts look at /proc; nothing in the image is started.
mount -t proc proc "$root/proc"
if [ -n "$DEB" ]; then
	cp "$DEB" "$root/tmp/raptiformica.deb"
	chroot "$root" dpkg -i /tmp/raptiformica.deb >"$work/log" 2>&1 || { cat "$work/log" >&2; exit 1; }
	rm -f "$root/tmp/raptiformica.deb"
fi
# An initramfs of what a VM boots from, not of every driver Debian has: a
# fraction of the size, and seconds less of decompressing it under TCG.
echo MODULES=list >"$root/etc/initramfs-tools/conf.d/raptiformica.conf"
printf '%s\n' virtio_pci virtio_blk ext4 >"$root/etc/initramfs-tools/modules"
kver="$(ls "$root/lib/modules")"
if [ -e "$root/boot/initrd.img-$kver" ]; then
	chroot "$root" update-initramfs -u -k "$kver" >"$work/log" 2>&1 || { cat "$work/log" >&2; exit 1; }
else
	chroot "$root" update-initramfs -c -k "$kver" >"$work/log" 2>&1 || { cat "$work/log" >&2; exit 1; }
fi
umount "$root/proc"

# debootstrap copied this machine's resolver settings: not the VMs' to
# know (the agent asks the node config's resolvers where there is none).
rm -f "$root/etc/resolv.conf"

cat >"$root/etc/fstab" <<'EOF'
/dev/vda / ext4 rw,errors=remount-ro 0 1
EOF
# Every VM makes its own machine ID at first boot, and its own name comes from
# the kernel command line (systemd.hostname=).
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
echo localhost >"$root/etc/hostname"

cat >"$root/usr/lib/systemd/system/raptiformica-fwcfg.service" <<'EOF'
# What this VM was handed through QEMU's firmware config (fw_cfg), readable by
# this VM's root only: the node config the qemu backend gives, copied where the
# packaged unit reads it, and root's authorized key for a machine to adopt. A
# VM made by hand has neither, and this does nothing.
[Unit]
Description=raptiformica node config from the VM's firmware
DefaultDependencies=no
After=local-fs.target systemd-modules-load.service
Before=raptiformica.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'modprobe qemu_fw_cfg 2>/dev/null; d=/sys/firmware/qemu_fw_cfg/by_name/opt/raptiformica; if [ -r $d/agent.json/raw ]; then install -d -m 0755 /etc/raptiformica && install -m 0600 $d/agent.json/raw /etc/raptiformica/agent.json; fi; if [ -r $d/authorized_keys/raw ]; then install -d -m 0700 /root/.ssh && install -m 0600 $d/authorized_keys/raw /root/.ssh/authorized_keys; fi'

[Install]
WantedBy=multi-user.target
EOF
units="raptiformica-fwcfg.service systemd-networkd.service systemd-network-generator.service"
if [ -n "$DEB" ]; then
	mkdir -p "$root/etc/systemd/system/raptiformica.service.d"
	cat >"$root/etc/systemd/system/raptiformica.service.d/vm.conf" <<'EOF'
# In a VM image: start once the firmware's node config is in place, and only
# if there is one (a VM made by hand has none until `raptiformica join`).
[Unit]
Wants=raptiformica-fwcfg.service
After=raptiformica-fwcfg.service
ConditionPathExists=/etc/raptiformica/agent.json
EOF
	units="$units raptiformica.service"
else
	# Every machine made from the image makes its own host keys.
	rm -f "$root"/etc/ssh/ssh_host_*
	mkdir -p "$root/etc/systemd/system/ssh.service.d"
	cat >"$root/etc/systemd/system/ssh.service.d/vm.conf" <<'EOF'
# Host keys are made at first boot, before Debian's own check of the
# server's settings (which fails without them), and root's key comes from
# the firmware.
[Unit]
Wants=raptiformica-fwcfg.service
After=raptiformica-fwcfg.service
[Service]
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
EOF
	units="$units ssh.service"
fi
chroot "$root" systemctl enable $units >"$work/log" 2>&1 || { cat "$work/log" >&2; exit 1; }

mkdir -p "$CACHE"
tmp="$OUT.tmp"
rm -rf "$tmp"
mkdir -p "$tmp"
cp -L "$root/boot/vmlinuz-$kver" "$tmp/vmlinuz"
cp -L "$root/boot/initrd.img-$kver" "$tmp/initrd.img"
mkfs.ext4 -q -F -L raptiformica -d "$root" "$tmp/disk.img" "$SIZE" >"$work/log" 2>&1 ||
	{ cat "$work/log" >&2; exit 1; }
rm -rf "$OUT"
mv "$tmp" "$OUT"
# Each image is a few hundred MiB on disk: keep the newest two of its kind.
case "$kind" in
vm) pattern='vm-*' other='vm-ssh-*' ;;
*) pattern="vm-ssh-$ARCH-*" other='' ;;
esac
find "$CACHE" -mindepth 1 -maxdepth 1 -type d -name "$pattern" ! -name "$other" ! -name '*.tmp' -printf '%T@ %p\0' |
	sort -z -rn | tail -z -n +3 | cut -z -d' ' -f2- | xargs -0 -r rm -rf --one-file-system --
echo "$OUT"
