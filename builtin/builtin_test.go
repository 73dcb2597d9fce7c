package builtin

import (
	"strings"
	"testing"

	"github.com/raptiformica/raptiformica/reconcile"
	"github.com/raptiformica/raptiformica/rules"
)

// The original project's compute modules become exec backends: the type
// the parser gives them must be registered, and its check must run at parse
// time so that a wrong command is named by line.
func TestComputeModulesMeetTheExecBackend(t *testing.T) {
	if _, ok := Registry()[rules.ExecType]; !ok {
		t.Fatalf("rules.ExecType %q is not a registered backend type (have %v)", rules.ExecType, Registry().Types())
	}
	src := "compute \"docker\" \"headless\" {\n  start_instance = \"docker run x\"\n  get_hostname = \"echo h\"\n}\nmachine \"s\" {\n  min = 1\n  consul_server = true\n  backends = [\"docker/headless\"]\n}\n"
	_, err := rules.Parse("p.hcl", []byte(src), reconcile.ParseOptions(Registry()))
	if err == nil || !strings.Contains(err.Error(), `p.hcl:1,1: compute "docker" "headless": an exec backend needs the command "clean_up_instance_command"`) {
		t.Fatalf("got %v, want the missing command named with file and line", err)
	}
}

// TestTrustDockerShareSocketRefusedAtItsLine: a share_socket the docker
// backend cannot read is refused where the description is parsed (apply,
// validate), at its file and line, not when a leader first builds the
// backend: a description that would give the engine's socket to the wrong
// machines never replaces a good one.
func TestTrustDockerShareSocketRefusedAtItsLine(t *testing.T) {
	_, err := rules.Parse("p.hcl", []byte(`machine "server" {
  min           = 3
  consul_server = true
}
backend "docker" {
  type     = "docker"
  settings = { share_socket = "clients" }
}
`), reconcile.ParseOptions(Registry()))
	if err == nil || !strings.Contains(err.Error(), `p.hcl:7,14: backend "docker" settings share_socket: must be "false", "servers"`) {
		t.Errorf("got %v, want share_socket refused at its line", err)
	}
}
