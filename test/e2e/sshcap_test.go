package e2e

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/raptiformica/raptiformica/internal/capped"
	"github.com/raptiformica/raptiformica/provision"
)

// memKeys trusts each host's first key, in memory.
type memKeys struct {
	mu   sync.Mutex
	keys map[string]ssh.PublicKey
}

func (m *memKeys) HostKey(_ context.Context, hp string) (ssh.PublicKey, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k, ok := m.keys[hp]
	return k, ok, nil
}

func (m *memKeys) RecordHostKey(_ context.Context, hp string, key ssh.PublicKey) (ssh.PublicKey, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if k, ok := m.keys[hp]; ok {
		return k, nil
	}
	m.keys[hp] = key
	return key, nil
}

// sshdContainer starts a real OpenSSH server in a container of the Debian
// image and returns its address and a key root logs in with.
func sshdContainer(t *testing.T) (provision.Host, string) {
	t.Helper()
	needDebianImage(t)
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(t.TempDir(), "id_ed25519")
	if err := os.WriteFile(key, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	sp, _ := ssh.NewPublicKey(pub)
	script := `set -e
ssh-keygen -A >/dev/null
mkdir -p /run/sshd /root/.ssh
echo "$PUB" > /root/.ssh/authorized_keys
chmod 700 /root/.ssh && chmod 600 /root/.ssh/authorized_keys
exec /usr/sbin/sshd -D -e`
	id := dockerRun(t, "run", "-d", "--label", "raptiformica.test=1", "-e", "PUB="+strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp))),
		debianImage, "/bin/sh", "-c", script)
	t.Cleanup(func() { dockerRun(t, "rm", "-f", id) })
	ip := dockerRun(t, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", id)
	waitUntil(t, 30*time.Second, "sshd in "+id, func() bool {
		out, _ := exec.Command("docker", "exec", id, "sh", "-c", "test -s /run/sshd.pid && echo up").Output()
		return strings.Contains(string(out), "up")
	})
	return provision.Host{User: "root", Addr: ip, Port: 22}, key
}

// A command run over SSH during adoption that prints without end neither
// grows the agent's memory past the cap nor is read as a whole output: it
// is stopped and reported, stdout and stderr alike.
func TestHostileSSHOutputCap(t *testing.T) {
	h, key := sshdContainer(t)
	d := provision.Dialer{Auth: provision.Auth{KeyFiles: []string{key}}, Trust: provision.Trust{Store: &memKeys{keys: map[string]ssh.PublicKey{}}}}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := d.Dial(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	// 64 MiB on stdout: far past the cap, and enough to see in the heap.
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	started := time.Now()
	out, err := conn.Run(ctx, []string{"head", "-c", "67108864", "/dev/zero"}, nil)
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if len(out) > provision.OutputLimit {
		t.Errorf("stdout: kept %d bytes, more than the %d cap", len(out), provision.OutputLimit)
	}
	if grown := int64(after.HeapAlloc) - int64(before.HeapAlloc); grown > 8<<20 {
		t.Errorf("the heap grew by %d MiB while the command ran", grown>>20)
	}
	if !errors.Is(err, capped.ErrOverflow) || !strings.Contains(err.Error(), "head -c 67108864") {
		t.Errorf("stdout over the cap: got error %v, want one that names the command and matches capped.ErrOverflow", err)
	}
	runtime.KeepAlive(out)
	t.Logf("stdout over the cap reported after %s: %v", time.Since(started).Round(time.Millisecond), err)

	// A command that prints without end on stderr and fails: its error
	// keeps a bounded part and says the rest was cut.
	_, err = conn.Run(ctx, []string{"/bin/sh", "-c", "head -c 67108864 /dev/zero | tr '\\0' x >&2; exit 3"}, nil)
	var re *provision.RunError
	if !errors.As(err, &re) || re.Code != 3 {
		t.Fatalf("stderr over the cap: got %v, want a RunError with exit status 3", err)
	}
	if len(re.Stderr) > provision.OutputLimit || !strings.Contains(err.Error(), "cut at") {
		t.Errorf("stderr over the cap: kept %d bytes, error %q; want at most %d and a note that it was cut", len(re.Stderr), truncateForLog(err.Error()), provision.OutputLimit)
	}
}

func truncateForLog(s string) string {
	if len(s) > 300 {
		return s[:300] + "…"
	}
	return s
}
