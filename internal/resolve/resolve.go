// Package resolve gives the agent DNS servers where the host names none.
//
// Go's own resolver (a static binary has no other) reads its servers from
// /etc/resolv.conf and, finding none there, asks [::1]:53 and 127.0.0.1:53.
// Android's Linux environments (Termux, a chroot) have no resolv.conf and
// nothing listening on the loopback's port 53: every name lookup fails.
// Their servers are in the system's properties (net.dns1, net.dns2); a
// node config may also name some. Where the host's own resolv.conf lists a
// server, nothing changes: the system's answer wins.
package resolve

import (
	"bufio"
	"context"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"time"
)

// ResolvConf is where Go's resolver reads its servers.
const ResolvConf = "/etc/resolv.conf"

// queryTimeout bounds one exchange with one server, as resolv.conf's
// default "timeout:5" does.
const queryTimeout = 5 * time.Second

// Props reads a system property (Android's getprop); "" when it has none.
type Props func(name string) string

// Servers returns the DNS servers (host:port) to use instead of the
// system's, nil when resolvConf lists one (the system's answer wins):
// those configured (a node config's resolvers), else those of the
// system's properties net.dns1 to net.dns4. Entries that are not
// addresses are skipped: a resolver given by name could not be found.
func Servers(resolvConf string, configured []string, props Props) []string {
	if hasNameserver(resolvConf) {
		return nil
	}
	var out []string
	for _, s := range configured {
		if a, ok := server(s); ok {
			out = append(out, a)
		}
	}
	if len(out) > 0 || props == nil {
		return out
	}
	for _, p := range []string{"net.dns1", "net.dns2", "net.dns3", "net.dns4"} {
		if a, ok := server(props(p)); ok {
			out = append(out, a)
		}
	}
	return out
}

// server is s as host:port, port 53 unless given.
func server(s string) (string, bool) {
	s = strings.TrimSpace(s)
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.String(), true
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.AddrPortFrom(a.Unmap(), 53).String(), true
	}
	return "", false
}

// hasNameserver reports whether a resolv.conf lists a server.
func hasNameserver(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) >= 2 && f[0] == "nameserver" {
			return true
		}
	}
	return false
}

// Resolver is Go's resolver asking servers, the next one each time a query
// goes out, so that one that does not answer costs its timeout and no
// more.
func Resolver(servers []string) *net.Resolver {
	var next atomic.Uint32
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			s := servers[int(next.Add(1)-1)%len(servers)]
			d := net.Dialer{Timeout: queryTimeout}
			return d.DialContext(ctx, network, s)
		},
	}
}

// Setup makes servers from the node config, or else the system's
// properties, the process's resolver where the host's resolv.conf lists
// none, and returns them (nil when nothing changed).
func Setup(configured []string) []string {
	servers := Servers(ResolvConf, configured, getprop)
	if len(servers) > 0 {
		net.DefaultResolver = Resolver(servers)
	}
	return servers
}

// getprop reads an Android system property, "" where there is no getprop.
func getprop(name string) string {
	path, err := exec.LookPath("getprop")
	if err != nil {
		return ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, name).Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}
