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
// It reports whether it made the bridge.
func ensureBridge(ctx context.Context, name string, gw netip.Prefix) (made bool, err error) {
	if err := routeClash(ctx, name, gw.Masked()); err != nil {
		return false, err
	}
	out, err := ip(ctx, "-j", "-d", "addr", "show", "dev", name)
	if err != nil {
		if _, err := ip(ctx, "link", "add", "name", name, "type", "bridge"); err != nil {
			// Another spawner may have made it meanwhile.
			if out, err = ip(ctx, "-j", "-d", "addr", "show", "dev", name); err != nil {
				return false, err
			}
		} else if out, err = ip(ctx, "-j", "-d", "addr", "show", "dev", name); err != nil {
			return true, err
		} else {
			made = true
		}
	}
	has, kind, err := bridgeAddrs(out)
	if err != nil {
		return made, fmt.Errorf("bridge %s: %w", name, err)
	}
	if kind != "bridge" {
		return made, fmt.Errorf("setting bridge: %s is an interface of this host that is not a bridge (%s): name another", name, orNone(kind))
	}
	if !has[gw.Addr()] {
		if _, err := ip(ctx, "addr", "add", gw.String(), "dev", name); err != nil && !strings.Contains(err.Error(), "File exists") {
			return made, err
		}
	}
	_, err = ip(ctx, "link", "set", "dev", name, "up")
	return made, err
}

// bridgeAddrs reads the addresses and the kind of link of
// `ip -j -d addr show dev X`.
func bridgeAddrs(out []byte) (map[netip.Addr]bool, string, error) {
	var links []struct {
		AddrInfo []struct {
			Local string `json:"local"`
		} `json:"addr_info"`
		LinkInfo struct {
			Kind string `json:"info_kind"`
		} `json:"linkinfo"`
	}
	if err := json.Unmarshal(out, &links); err != nil {
		return nil, "", fmt.Errorf("read ip's answer: %w", err)
	}
	has := map[netip.Addr]bool{}
	kind := ""
	for _, l := range links {
		kind = l.LinkInfo.Kind
		for _, a := range l.AddrInfo {
			if p, err := netip.ParseAddr(a.Local); err == nil {
				has[p] = true
			}
		}
	}
	return has, kind, nil
}

func orNone(s string) string {
	if s == "" {
		return "a plain interface"
	}
	return "a " + s
}

// routeClash refuses a subnet for the VMs that this host already routes
// through another interface: giving the bridge its address would take
// part of a real network (a LAN, a VPN, a Docker network) from the host.
func routeClash(ctx context.Context, bridge string, subnet netip.Prefix) error {
	out, err := ip(ctx, "-j", "-4", "route", "show", "table", "main")
	if err != nil {
		return err
	}
	var routes []struct {
		Dst string `json:"dst"`
		Dev string `json:"dev"`
	}
	if err := json.Unmarshal(out, &routes); err != nil {
		return fmt.Errorf("read ip's routes: %w", err)
	}
	for _, r := range routes {
		if r.Dev == bridge || r.Dst == "default" {
			continue
		}
		dst, err := netip.ParsePrefix(r.Dst)
		if err != nil {
			a, err := netip.ParseAddr(r.Dst)
			if err != nil {
				continue
			}
			dst = netip.PrefixFrom(a, 32)
		}
		if dst.Overlaps(subnet) {
			return fmt.Errorf("setting subnet: %s overlaps %s, which this host routes through %s: give the VMs a network of their own", subnet, dst, r.Dev)
		}
	}
	return nil
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
