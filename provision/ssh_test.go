package provision

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

func TestParseHost(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Host
		err  string
	}{
		{in: "192.0.2.10", want: Host{User: "root", Addr: "192.0.2.10", Port: 22}},
		{in: "deploy@nas.home:2222", want: Host{User: "deploy", Addr: "nas.home", Port: 2222}},
		{in: "[2001:db8::1]:2200", want: Host{User: "root", Addr: "2001:db8::1", Port: 2200}},
		{in: "2001:db8::1", want: Host{User: "root", Addr: "2001:db8::1", Port: 22}},
		{in: "a@b@c", want: Host{User: "a@b", Addr: "c", Port: 22}},
		{in: "@host", err: `empty user`},
		{in: "host:0", err: `port "0" is not a port number`},
		{in: "host:ssh", err: `port "ssh" is not a port number`},
		{in: "root@", err: `no host name`},
		// Hostile spellings: what they make of a host is no host.
		{in: "x]:22", err: `neither an IP address nor a host name`},
		{in: "vps 1", err: `neither an IP address nor a host name`},
		{in: "[x", err: `neither an IP address nor a host name`},
		{in: "host/path", err: `neither an IP address nor a host name`},
	} {
		got, err := ParseHost(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseHost(%q): got %v, want error with %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseHost(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

// shellQuote's words reach the program as they are, whatever they hold:
// checked by the shell that will parse them.
func TestShellQuote(t *testing.T) {
	args := []string{"printf", "%s|", "it's", "$HOME", "`id`", "a b", "", "\\", "*", "\n"}
	out, err := exec.Command("/bin/sh", "-c", shellQuote(args)).Output()
	if err != nil {
		t.Fatal(err)
	}
	want := "it's|$HOME|`id`|a b||\\|*|\n|"
	if string(out) != want {
		t.Errorf("through the shell: got %q want %q", out, want)
	}
}

// With known_hosts naming the host, the client asks for those key types
// only, so a server holding several types shows the one we know.
func TestKnownHostsAlgorithms(t *testing.T) {
	_, priv, _ := ed25519.GenerateKey(nil)
	signer, _ := ssh.NewSignerFromKey(priv)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecSigner, _ := ssh.NewSignerFromKey(ecKey)
	f := filepath.Join(t.TempDir(), "known_hosts")
	lines := knownhosts.Line([]string{"192.0.2.7"}, signer.PublicKey()) + "\n" +
		knownhosts.Line([]string{"[192.0.2.8]:2222"}, ecSigner.PublicKey()) + "\n"
	if err := os.WriteFile(f, []byte(lines), 0o600); err != nil {
		t.Fatal(err)
	}
	tr := Trust{KnownHosts: []string{f}}
	if got := tr.algorithms(Host{Addr: "192.0.2.7", Port: 22}); len(got) != 1 || got[0] != ssh.KeyAlgoED25519 {
		t.Errorf("algorithms for an ed25519 host: %v", got)
	}
	if got := tr.algorithms(Host{Addr: "192.0.2.8", Port: 2222}); len(got) != 1 || got[0] != ssh.KeyAlgoECDSA256 {
		t.Errorf("algorithms for an ecdsa host on port 2222: %v", got)
	}
	if got := tr.algorithms(Host{Addr: "192.0.2.9", Port: 22}); got != nil {
		t.Errorf("algorithms for a host known_hosts does not name: %v", got)
	}
}
