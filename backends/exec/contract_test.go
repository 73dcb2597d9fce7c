package exec

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/raptiformica/raptiformica/backends"
)

// recordingAdopter is a hand-written Adopter: the SSH adoption itself is
// provision's, tested there and end to end; here, what the backend asks.
type recordingAdopter struct {
	got      []SSHMachine
	err      error
	identity error
	asked    []string
}

func (r *recordingAdopter) Adopt(ctx context.Context, m SSHMachine) error {
	if _, ok := ctx.Deadline(); !ok {
		return errors.New("no deadline")
	}
	r.got = append(r.got, m)
	if m.Progress != nil {
		m.Progress("root@" + m.Addr + " connect ok")
	}
	return r.err
}

func (r *recordingAdopter) CheckIdentity(identity string) error {
	r.asked = append(r.asked, identity)
	return r.identity
}

func sshBackend(t *testing.T, a Adopter, cmds map[string][]string, settings map[string]string) (*Backend, string) {
	t.Helper()
	pool := t.TempDir()
	all := map[string]string{"pool": pool, "timeout": "5s", "query_timeout": "5s", SettingContract: ContractSSH}
	for k, v := range settings {
		all[k] = v
	}
	b, err := NewFactory(a)(backends.Config{Name: "docker/worker", Settings: all, Commands: cmds},
		backends.Env{Cluster: "t", ClusterDir: t.TempDir(), Binary: "/bin/rf", ConsulBinary: "/bin/consul"})
	if err != nil {
		t.Fatal(err)
	}
	return b.(*Backend), pool
}

func TestContractSSHAdoptsWhatStartMade(t *testing.T) {
	a := &recordingAdopter{}
	cmds := fakeMachines()
	cmds[CmdPort] = sh(`echo 2222`)
	b, _ := sshBackend(t, a, cmds, map[string]string{SettingIdentity: "/keys/id"})
	in, err := b.Spawn(context.Background(), spec("worker-1"))
	if err != nil {
		t.Fatal(err)
	}
	if in.Address != "10.9.8.7" || !in.Running {
		t.Errorf("spawned %+v", in)
	}
	if len(a.got) != 1 {
		t.Fatalf("adopted %d machines, want 1", len(a.got))
	}
	m := a.got[0]
	if m.Addr != "10.9.8.7" || m.Port != 2222 || m.Identity != "/keys/id" || m.Binary != "/bin/rf" || m.Consul != "/bin/consul" {
		t.Errorf("adopted %+v, want 10.9.8.7:2222 with /keys/id and this node's binaries", m)
	}
	if m.Node.MachineID != "worker-1" || m.Node.MachineType != "worker" || m.Node.Backend != "docker/worker" || m.Node.Cluster != "t" {
		t.Errorf("node config %+v, want worker-1 of type worker on docker/worker", m.Node)
	}
	if log := readFile(t, filepath.Join(b.dir, "worker-1", "commands.log")); !strings.Contains(log, `adopt ["ssh" "root@10.9.8.7:2222"]`) || !strings.Contains(log, "root@10.9.8.7 connect ok\n") {
		t.Errorf("commands.log does not record the adoption and its steps:\n%s", log)
	}
}

func TestContractSSHDefaultPort(t *testing.T) {
	a := &recordingAdopter{}
	cmds := fakeMachines()
	delete(cmds, CmdPort)
	b, _ := sshBackend(t, a, cmds, nil)
	if _, err := b.Spawn(context.Background(), spec("worker-1")); err != nil {
		t.Fatal(err)
	}
	if len(a.got) != 1 || a.got[0].Port != 22 || a.got[0].Identity != "" {
		t.Errorf("adopted %+v, want port 22 (no get_port) and the agent's own keys", a.got)
	}
}

// A failed adoption fails the spawn, naming the address, and removes the
// machine: nothing is left running that is not a node.
func TestContractSSHAdoptionFails(t *testing.T) {
	a := &recordingAdopter{err: errors.New("connect: connection refused")}
	b, pool := sshBackend(t, a, fakeMachines(), nil)
	_, err := b.Spawn(context.Background(), spec("worker-1"))
	if err == nil || !strings.Contains(err.Error(), "worker-1: adopt over SSH at 10.9.8.7:22: connect: connection refused") {
		t.Fatalf("err = %v, want the adoption's failure naming machine and address", err)
	}
	if got := readFile(t, filepath.Join(pool, "cleaned")); got != "worker-1\n" {
		t.Errorf("clean_up ran for %q, want worker-1", got)
	}
}

// Without an identity the backend says so as unavailable, and a spawn is
// refused before start_instance makes anything.
func TestContractSSHWithoutIdentity(t *testing.T) {
	a := &recordingAdopter{identity: errors.New("this node has no SSH identity to log in with")}
	b, pool := sshBackend(t, a, fakeMachines(), nil)
	want := "machines of docker/worker are logged into as root over SSH (contract \"ssh\"), but this node has no SSH identity to log in with"
	if err := b.Available(context.Background()); err == nil || err.Error() != want {
		t.Errorf("Available = %v, want %q", err, want)
	}
	_, err := b.Spawn(context.Background(), spec("worker-1"))
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Spawn = %v, want %q", err, want)
	}
	if _, err := os.Stat(filepath.Join(pool, "worker-1")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("start_instance ran without an identity (stat: %v)", err)
	}
	if len(a.got) != 0 {
		t.Errorf("adopted %+v", a.got)
	}
}

func TestContractSettings(t *testing.T) {
	for _, tc := range []struct {
		name     string
		settings map[string]string
		adopter  Adopter
		want     string
	}{
		{"unknown contract", map[string]string{SettingContract: "telnet"}, &recordingAdopter{}, `setting contract: want "agent" (start_instance starts our agent) or "ssh"`},
		{"identity without ssh", map[string]string{SettingIdentity: "/k"}, &recordingAdopter{}, `setting identity: only for contract = "ssh"`},
		{"ssh without an adopter", map[string]string{SettingContract: ContractSSH}, nil, `setting contract: "ssh" needs SSH adoption`},
		{"agent", map[string]string{SettingContract: ContractAgent}, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := New
			if tc.adopter != nil {
				f = NewFactory(tc.adopter)
			}
			_, err := f(backends.Config{Name: "x", Settings: tc.settings, Commands: fakeMachines()}, backends.Env{ClusterDir: t.TempDir()})
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("got %v, want %q", err, tc.want)
			}
		})
	}
}
