package provision

import (
	"context"
	"crypto/ed25519"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/raptiformica/raptiformica/backends/exec"
)

func writeKey(t *testing.T, path string) {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(nil)
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestSpawnAdopterCheckIdentity(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "id")
	writeKey(t, key)
	garbage := filepath.Join(dir, "garbage")
	os.WriteFile(garbage, []byte("not a key"), 0o600)
	emptyHome := filepath.Join(dir, "empty-home")
	os.MkdirAll(emptyHome, 0o700)
	keyHome := filepath.Join(dir, "key-home")
	writeKey(t, filepath.Join(keyHome, ".ssh", "id_ecdsa"))

	for _, tc := range []struct {
		name, identity, home, agent, want string
	}{
		{name: "identity file", identity: key, home: emptyHome},
		{name: "identity missing", identity: filepath.Join(dir, "nope"), home: keyHome, want: "setting identity: open " + filepath.Join(dir, "nope")},
		{name: "identity not a key", identity: garbage, home: keyHome, want: "setting identity: " + garbage + " is not an unencrypted private key"},
		{name: "the agent user's key", home: keyHome},
		{name: "the agent's SSH agent", home: emptyHome, agent: "/run/agent.sock"},
		{name: "nothing", home: emptyHome, want: `this node has no SSH identity to log in with: set identity = "/path/to/key" on the backend, or give the user the agent runs as a key (` + filepath.Join(emptyHome, ".ssh", "id_ed25519")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("HOME", tc.home)
			t.Setenv("SSH_AUTH_SOCK", tc.agent)
			err := SpawnAdopter{}.CheckIdentity(tc.identity)
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("got %v, want %q", err, tc.want)
			}
		})
	}
}

// The key a spawned machine first presents is trusted for that adoption
// only: a different key within it is refused, and a new adoption (a new
// spawn) starts from nothing, recording nowhere else.
func TestSpawnKeysTrustOneAdoption(t *testing.T) {
	key := func() ssh.PublicKey {
		pub, _, _ := ed25519.GenerateKey(nil)
		k, _ := ssh.NewPublicKey(pub)
		return k
	}
	first, second := key(), key()
	h := Host{User: "root", Addr: "10.0.0.5", Port: 22}
	remote := &net.TCPAddr{IP: net.ParseIP("10.0.0.5"), Port: 22}
	ctx := context.Background()

	tr := Trust{Store: &spawnKeys{}}
	cb, err := tr.callback(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	if err := cb("10.0.0.5:22", remote, first); err != nil {
		t.Fatalf("the first key of a spawned machine: %v", err)
	}
	if err := cb("10.0.0.5:22", remote, first); err != nil {
		t.Errorf("the same key again: %v", err)
	}
	if err := cb("10.0.0.5:22", remote, second); !errors.Is(err, ErrHostKey) {
		t.Errorf("another key within one adoption: got %v, want ErrHostKey", err)
	}
	// The next spawn at the same address is another machine.
	cb, _ = Trust{Store: &spawnKeys{}}.callback(ctx, h)
	if err := cb("10.0.0.5:22", remote, second); err != nil {
		t.Errorf("a new spawn's first key: %v", err)
	}
}

// Adopt refuses to run without a deadline, and its failure to connect is
// an adoption step error naming the host.
func TestSpawnAdopterAdopt(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "id")
	writeKey(t, key)
	m := exec.SSHMachine{Addr: "127.0.0.1", Port: 1, Identity: key}
	if err := (SpawnAdopter{}).Adopt(context.Background(), m); err == nil || !strings.Contains(err.Error(), "needs a deadline") {
		t.Errorf("without a deadline: got %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := SpawnAdopter{}.Adopt(ctx, m)
	var se *StepError
	if !errors.As(err, &se) || se.Step != "connect" || se.Host.String() != "root@127.0.0.1:1" {
		t.Errorf("got %v, want a connect StepError for root@127.0.0.1:1", err)
	}
}
