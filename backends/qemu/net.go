package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"time"
)

// ipTimeout bounds one ip(8) call: it talks to the kernel over netlink
// and returns in milliseconds, unless the host is in trouble.
const ipTimeout = 10 * time.Second

// ip runs ip(8) and returns its output; an error carries what it said.
func ip(ctx context.Context, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, ipTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

// ensureBridge makes the bridge the VMs' taps join, if it is not there,
// gives it the gateway address gw (the host's own on the VMs' network)
// and brings it up. A bridge an operator made is kept as it is, with the
// addresses it has: the host's processes that VMs must reach (a local
// cluster's servers) may be bound to more of them.
func ensureBridge(ctx context.Context, name string, gw netip.Prefix) error {
	out, err := ip(ctx, "-j", "addr", "show", "dev", name)
	if err != nil {
		if _, err := ip(ctx, "link", "add", "name", name, "type", "bridge"); err != nil {
			// Another spawner may have made it meanwhile.
			if out, err = ip(ctx, "-j", "addr", "show", "dev", name); err != nil {
				return err
			}
		} else if out, err = ip(ctx, "-j", "addr", "show", "dev", name); err != nil {
			return err
		}
	}
	has, err := bridgeAddrs(out)
	if err != nil {
		return fmt.Errorf("bridge %s: %w", name, err)
	}
	if !has[gw.Addr()] {
		if _, err := ip(ctx, "addr", "add", gw.String(), "dev", name); err != nil && !strings.Contains(err.Error(), "File exists") {
			return err
		}
	}
	_, err = ip(ctx, "link", "set", "dev", name, "up")
	return err
}

// bridgeAddrs reads the addresses of `ip -j addr show dev X`.
func bridgeAddrs(out []byte) (map[netip.Addr]bool, error) {
	var links []struct {
		AddrInfo []struct {
			Local string `json:"local"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal(out, &links); err != nil {
		return nil, fmt.Errorf("read ip's answer: %w", err)
	}
	has := map[netip.Addr]bool{}
	for _, l := range links {
		for _, a := range l.AddrInfo {
			if p, err := netip.ParseAddr(a.Local); err == nil {
				has[p] = true
			}
		}
	}
	return has, nil
}

// attachTap puts a VM's tap on the bridge and brings it up. QEMU made the
// tap when it started (paused): it goes away with the QEMU process, so a
// VM killed leaves no interface behind.
func attachTap(ctx context.Context, tap, bridge string) error {
	_, err := ip(ctx, "link", "set", "dev", tap, "master", bridge, "up")
	return err
}

// hostAddrs are the addresses of this host's interfaces: a VM is never
// given one of them.
func hostAddrs() (map[netip.Addr]bool, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	own := map[netip.Addr]bool{}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			own[p.Addr()] = true
		}
	}
	return own, nil
}
