#!/usr/bin/env bash
# arm64vm.sh COMMAND is an exec backend's commands in the SSH contract for
# TestArch...: each machine is an arm64 Debian VM (qemu-system-aarch64 under
# emulation, the bare image of scripts/vmimage.sh booted directly) on the
# lab's bridge, which root logs into with the key handed in through fw_cfg.
# The backend adopts it. Settings (RAPTIFORMICA_SETTING_*): IMAGE, the image
# folder; BRIDGE and PREFIX, the lab's bridge and its /24 without the last
# octet; PUBKEY, the authorized key's file; NET, a folder for the addresses
# handed out.
set -euo pipefail
image="$RAPTIFORMICA_SETTING_IMAGE" bridge="$RAPTIFORMICA_SETTING_BRIDGE"
prefix="$RAPTIFORMICA_SETTING_PREFIX" net="$RAPTIFORMICA_SETTING_NET"
wd="$RAPTIFORMICA_WORKDIR"

alive() { [ -s "$wd/pid" ] && kill -0 "$(cat "$wd/pid")" 2>/dev/null; }

case "$1" in
start)
	# One address per machine, never handed out twice in a lab.
	exec 9>>"$net/.lock"
	flock 9
	n="$(cat "$net/next" 2>/dev/null || echo 100)"
	echo $((n + 1)) >"$net/next"
	exec 9>&-
	addr="$prefix.$n"
	echo "$addr" >"$wd/address"
	tap="rfa$(echo "$RAPTIFORMICA_MACHINE_ID" | sha256sum | cut -c1-8)"
	echo "$tap" >"$wd/tap"
	qemu-img create -q -f qcow2 -b "$image/disk.img" -F raw "$wd/disk.qcow2" 4G
	ip tuntap add dev "$tap" mode tap
	ip link set dev "$tap" master "$bridge" up
	# A session of its own: the backend's deadline kills the command's
	# group, never the machine it made.
	setsid qemu-system-aarch64 -machine virt -cpu cortex-a72 -smp 1 -m 1024 -nodefaults -display none \
		-serial "file:$wd/console.log" \
		-kernel "$image/vmlinuz" -initrd "$image/initrd.img" \
		-append "root=/dev/vda rw console=ttyAMA0 net.ifnames=0 quiet ip=$addr::$prefix.1:255.255.255.0:$RAPTIFORMICA_MACHINE_ID:eth0:off" \
		-drive "file=$wd/disk.qcow2,if=none,id=d0,format=qcow2" -device virtio-blk-pci,drive=d0 \
		-netdev "tap,id=n0,ifname=$tap,script=no,downscript=no" -device virtio-net-pci,netdev=n0 \
		-fw_cfg "name=opt/raptiformica/authorized_keys,file=$RAPTIFORMICA_SETTING_PUBKEY" \
		-pidfile "$wd/pid" </dev/null >"$wd/qemu.log" 2>&1 &
	# Up when its sshd answers: minutes under emulation.
	for _ in $(seq 600); do
		if (exec 3<>"/dev/tcp/$addr/22") 2>/dev/null; then
			exit 0
		fi
		sleep 1
		if [ -s "$wd/pid" ] && ! alive; then
			echo "QEMU exited: $(tail -n 5 "$wd/qemu.log") $(tail -n 20 "$wd/console.log")" >&2
			exit 1
		fi
	done
	echo "no SSH at $addr after 10 minutes; its console ends: $(tail -n 20 "$wd/console.log")" >&2
	exit 1
	;;
hostname)
	cat "$wd/address"
	;;
running)
	alive
	;;
clean)
	if [ -s "$wd/pid" ]; then
		kill -9 "$(cat "$wd/pid")" 2>/dev/null || true
	fi
	if [ -s "$wd/tap" ]; then
		ip link del "$(cat "$wd/tap")" 2>/dev/null || true
	fi
	rm -f "$wd/disk.qcow2"
	;;
*)
	echo "arm64vm.sh: unknown command $1" >&2
	exit 2
	;;
esac
