package resolve

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// dnsServer answers A queries for name with addr, and every other query
// with no answer, over UDP on loopback, until the test ends.
func dnsServer(t *testing.T, name string, addr [4]byte) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var p dnsmessage.Parser
			h, err := p.Start(buf[:n])
			if err != nil {
				continue
			}
			q, err := p.Question()
			if err != nil {
				continue
			}
			b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionAvailable: true})
			b.EnableCompression()
			_ = b.StartQuestions()
			_ = b.Question(q)
			_ = b.StartAnswers()
			if q.Type == dnsmessage.TypeA && q.Name.String() == name {
				_ = b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60}, dnsmessage.AResource{A: addr})
			}
			msg, err := b.Finish()
			if err != nil {
				continue
			}
			_, _ = pc.WriteTo(msg, from)
		}
	}()
	return pc.LocalAddr().String()
}

// TestArchResolverWithoutResolvConf: on a host with no /etc/resolv.conf
// (Android's Linux environments), the servers come from the node config,
// else from the system's properties, and a name resolves through them; a
// host whose resolv.conf lists a server keeps its own.
func TestArchResolverWithoutResolvConf(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "resolv.conf")
	srv := dnsServer(t, "seed.example.test.", [4]byte{192, 0, 2, 7})
	props := func(name string) string {
		return map[string]string{"net.dns1": "192.0.2.53", "net.dns2": "not an address"}[name]
	}

	if got := Servers(missing, []string{srv, "dns.example.org"}, props); !slices.Equal(got, []string{srv}) {
		t.Errorf("configured resolvers: got %v, want %v (a name is no resolver)", got, []string{srv})
	}
	if got := Servers(missing, nil, props); !slices.Equal(got, []string{"192.0.2.53:53"}) {
		t.Errorf("from the system's properties: got %v, want 192.0.2.53:53", got)
	}
	if got := Servers(missing, nil, nil); len(got) != 0 {
		t.Errorf("nothing to go by: got %v", got)
	}
	withOwn := filepath.Join(dir, "own.conf")
	if err := os.WriteFile(withOwn, []byte("# the host's own\nnameserver 10.0.0.1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := Servers(withOwn, []string{srv}, props); got != nil {
		t.Errorf("a host with its own resolv.conf: got %v, want it left alone", got)
	}
	empty := filepath.Join(dir, "empty.conf")
	if err := os.WriteFile(empty, []byte("search example.org\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := Servers(empty, []string{srv}, nil); !slices.Equal(got, []string{srv}) {
		t.Errorf("a resolv.conf without a nameserver: got %v", got)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	addrs, err := Resolver([]string{srv}).LookupHost(ctx, "seed.example.test")
	if err != nil || !slices.Equal(addrs, []string{"192.0.2.7"}) {
		t.Fatalf("lookup through the configured server: %v %v", addrs, err)
	}
	if _, err := Resolver([]string{srv}).LookupHost(ctx, "other.example.test"); err == nil {
		t.Error("a name the server does not know resolved")
	}
}
