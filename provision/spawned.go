package provision

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"golang.org/x/crypto/ssh"

	"github.com/raptiformica/raptiformica/backends/exec"
	"github.com/raptiformica/raptiformica/deploy/systemd"
	"github.com/raptiformica/raptiformica/internal/arch"
)

// SpawnAdopter adopts the machines an exec backend makes in the original
// project's contract (exec.ContractSSH): start_instance made a machine root
// can log into over SSH, and this installs the agent there as `raptiformica
// adopt` does. The machine is new and its host key known to no one, so the
// key it presents is trusted for that one adoption only: it is not
// recorded among the cluster's host keys (raptiformica/hostkeys/), where it
// would vouch for whatever later answers at a reused address and port.
type SpawnAdopter struct {
	// Progress, when set, is told each step as it ends.
	Progress func(Step)
}

var _ exec.Adopter = SpawnAdopter{}

// CheckIdentity says why no SSH identity can log in: identity, a private
// key file, must be readable and unencrypted; without it, the agent's own
// keys are used (its SSH agent, or ~/.ssh/id_* of the user it runs as),
// and one of them must be there.
func (SpawnAdopter) CheckIdentity(identity string) error {
	if identity != "" {
		b, err := os.ReadFile(identity)
		if err != nil {
			return fmt.Errorf("setting %s: %w", exec.SettingIdentity, err)
		}
		if _, err := ssh.ParsePrivateKey(b); err != nil {
			return fmt.Errorf("setting %s: %s is not an unencrypted private key: %v", exec.SettingIdentity, identity, err)
		}
		return nil
	}
	if os.Getenv("SSH_AUTH_SOCK") != "" {
		return nil
	}
	files := defaultKeyFiles()
	for _, f := range files {
		if _, err := os.Stat(f); err == nil {
			return nil
		}
	}
	return fmt.Errorf("this node has no SSH identity to log in with: set %s = \"/path/to/key\" on the backend, or give the user the agent runs as a key (%s) or an SSH agent (SSH_AUTH_SOCK)",
		exec.SettingIdentity, strings.Join(files, ", "))
}

// Adopt installs and starts the agent on m as root. It blocks until the
// agent is started there or ctx ends (the spawn's deadline); it does not
// wait for the machine to join, which the control loop watches. A node it
// started is stopped again when a later step fails.
func (a SpawnAdopter) Adopt(ctx context.Context, m exec.SSHMachine) error {
	if _, ok := ctx.Deadline(); !ok {
		return errors.New("adopting a spawned machine needs a deadline")
	}
	d, err := NewDialer(DialOptions{Identity: m.Identity})
	if err != nil {
		return err
	}
	d.Trust.Store = &spawnKeys{}
	h := Host{User: "root", Addr: m.Addr, Port: m.Port}
	if h.Port == 0 {
		h.Port = 22
	}
	ad := &Adopter{Dialer: d, Artifacts: arch.Artifacts{Binary: m.Binary, Consul: m.Consul}, Arch: m.Arch, Unit: systemd.Unit(RemoteBinary), Progress: a.Progress}
	if m.Progress != nil {
		ad.Progress = func(s Step) {
			if a.Progress != nil {
				a.Progress(s)
			}
			m.Progress(s.String())
		}
	}
	_, err = ad.Adopt(ctx, AdoptSpec{Host: h, Node: AdoptedNode(m.Node, h)})
	return err
}

// spawnKeys trusts the first host key it is shown, in memory: one
// adoption's connection to a machine it has just made.
type spawnKeys struct {
	mu   sync.Mutex
	keys map[string]ssh.PublicKey // hostport -> first key; guarded by mu
}

func (s *spawnKeys) HostKey(_ context.Context, hostport string) (ssh.PublicKey, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, ok := s.keys[hostport]
	return k, ok, nil
}

func (s *spawnKeys) RecordHostKey(_ context.Context, hostport string, key ssh.PublicKey) (ssh.PublicKey, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if k, ok := s.keys[hostport]; ok {
		return k, nil
	}
	if s.keys == nil {
		s.keys = map[string]ssh.PublicKey{}
	}
	s.keys[hostport] = key
	return key, nil
}
