// Package testconsul starts real Consul agents for tests: one single-server
// cluster per test package, on a loopback address of its own so that packages
// run side by side without sharing ports.
package testconsul

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/internal/consulclient"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
)

// Server is a running Consul dev agent.
type Server struct {
	Addr   string // "127.a.b.c:8500"
	IP     string
	Client *api.Client
	cmd    *exec.Cmd
	dir    string
}

// Binary returns the Consul binary tests use, failing loudly when there is
// none: tests are never skipped for lack of Consul (`make test` builds it).
func Binary() (string, error) {
	return nodeconfig.FindConsul()
}

// FreeIP returns a loopback address on which port 8500 is free.
func FreeIP() string {
	for {
		ip := fmt.Sprintf("127.%d.%d.%d", 16+rand.IntN(224), rand.IntN(256), 2+rand.IntN(250))
		ln, err := net.Listen("tcp", ip+":8500")
		if err == nil {
			ln.Close()
			return ip
		}
	}
}

// Start runs `consul agent -dev` on a free loopback address and waits until it
// has a leader. Stop it with Stop.
func Start() (*Server, error) { return StartWith() }

// StartWith is Start with more arguments to `consul agent`, such as
// -encrypt KEY.
func StartWith(args ...string) (*Server, error) {
	ip := FreeIP()
	return start(ip, append([]string{"-dev", "-node", "test-" + ip}, args...))
}

// StartServer runs a Consul server that is not in dev mode, named node, on
// ip, that joins the cluster of join (a dev agent's IP) and waits until it
// has a leader: for a test of what a cluster of several servers reports.
// ip may be one a stopped server used; args go to `consul agent` too.
func StartServer(ip, node, join string, args ...string) (*Server, error) {
	return start(ip, append([]string{"-server", "-node", node, "-retry-join", join, "-retry-interval", "1s"}, args...))
}

// StartClient runs a Consul client agent named node on ip that joins the
// cluster of join (a server's IP) and waits until it sees a leader through
// it: for a test of what a client does once its servers are gone.
func StartClient(ip, node, join string, args ...string) (*Server, error) {
	return start(ip, append([]string{"-node", node, "-retry-join", join, "-retry-interval", "1s"}, args...))
}

// StartUnjoined runs a Consul agent named node on ip that joins the
// gossip of join and waits only until its own HTTP API answers, not for
// a leader: for an agent the cluster does not let in (a client that
// restarted its Consul as a server, say), which never sees one.
func StartUnjoined(ip, node, join string, args ...string) (*Server, error) {
	return startUntil(ip, append([]string{"-node", node, "-retry-join", join, "-retry-interval", "1s"}, args...), func(c *api.Client) bool {
		_, err := c.Agent().Self()
		return err == nil
	})
}

func start(ip string, args []string) (*Server, error) {
	return startUntil(ip, args, func(c *api.Client) bool {
		l, err := c.Status().Leader()
		return err == nil && l != ""
	})
}

func startUntil(ip string, args []string, ready func(*api.Client) bool) (*Server, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	// As the agent does (consulclient.NodeID): the leader finds a member
	// in the Raft configuration by the ID its name gives.
	if i := slices.Index(args, "-node"); i >= 0 && i+1 < len(args) && !slices.Contains(args, "-node-id") {
		args = append(args, "-node-id", consulclient.NodeID(args[i+1]))
	}
	dir, err := os.MkdirTemp("", "testconsul")
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "agent", "-bind", ip, "-client", ip, "-dns-port", "-1", "-grpc-port", "-1",
		"-serf-wan-port", "-1", "-data-dir", dir, "-log-level", "warn")
	cmd.Args = append(cmd.Args, args...)
	logf, err := os.Create(filepath.Join(dir, "consul.log"))
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &Server{Addr: ip + ":8500", IP: ip, cmd: cmd, dir: dir}
	cfg := api.DefaultConfig()
	cfg.Address, cfg.Scheme = s.Addr, "http"
	cfg.Token = ""
	if s.Client, err = api.NewClient(cfg); err != nil {
		s.Stop()
		return nil, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if ready(s.Client) {
			return s, nil
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(filepath.Join(dir, "consul.log"))
			s.Stop()
			return nil, fmt.Errorf("consul on %s is not ready after 30s:\n%s", ip, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop kills the agent and removes its folder.
func (s *Server) Stop() {
	if s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
	}
	os.RemoveAll(s.dir)
}

// Reset deletes every key under prefix, for a test that wants a clean KV.
func (s *Server) Reset(prefix string) error {
	_, err := s.Client.KV().DeleteTree(prefix, nil)
	return err
}

// ACLRoot is the management token of a StartACL agent.
const ACLRoot = "root-token-of-this-test"

// StartACL starts a Consul dev agent for one test with the cluster's ACL
// defaults (deny), stopped when the test ends; its management token is
// ACLRoot.
func StartACL(t testing.TB) *Server {
	t.Helper()
	c, err := StartWith("-hcl", `acl { enabled = true
default_policy = "deny"
tokens { initial_management = "`+ACLRoot+`" } }`)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	return c
}

// ClientWithToken is a client of the agent s that sends token.
func (s *Server) ClientWithToken(t testing.TB, token string) *api.Client {
	t.Helper()
	cfg := api.DefaultConfig()
	cfg.Address, cfg.Scheme, cfg.Token = s.Addr, "http", token
	cl, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cl
}
