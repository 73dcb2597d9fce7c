package e2e

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/backends/docker"
	"github.com/raptiformica/raptiformica/daemon/agentapi"
	"github.com/raptiformica/raptiformica/internal/consulclient"
	"github.com/raptiformica/raptiformica/internal/identity"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/pki"
	"github.com/raptiformica/raptiformica/internal/testconsul"
)

// TestSecureConsulRefusesStrangers: a local process without the cluster's
// token reaches every machine's Consul on its own address, as a stranger on
// the network would, and is refused: it lists, reads and writes no key (the
// gossip key and the mesh secret among them), sees no member, and cannot
// replace the description. The operator's commands, holding the token `up`
// keeps in the folder (readable by its owner only), work.
func TestSecureConsulRefusesStrangers(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	c.up(c.writePlatform("platform.hcl", platformSrc(3, 3)))
	c.waitAgree(3, time.Minute, "after up")

	if st, err := os.Stat(filepath.Join(c.dir, "identity.json")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("the cluster's identity in its folder: %v (mode %v), want a file only its owner reads", err, st.Mode().Perm())
	}
	for _, m := range c.machines() {
		if !m.Running {
			continue
		}
		cfg := api.DefaultConfig()
		cfg.Address, cfg.Scheme, cfg.Token = fmt.Sprintf("%s:%d", m.Config.BindAddr, m.Config.ConsulHTTPPort), "http", ""
		stranger, err := api.NewClient(cfg)
		if err != nil {
			t.Fatal(err)
		}
		who := m.Config.MachineID
		if pairs, _, err := stranger.KV().List(kvschema.Prefix, nil); err == nil && len(pairs) > 0 {
			t.Errorf("%s: a stranger listed %d keys", who, len(pairs))
		}
		for _, key := range []string{kvschema.GossipKey, kvschema.Platform, kvschema.Inventory + who} {
			if pair, _, err := stranger.KV().Get(key, nil); err == nil && pair != nil {
				t.Errorf("%s: a stranger read %s", who, key)
			}
		}
		if _, err := stranger.KV().Put(&api.KVPair{Key: kvschema.Platform, Value: []byte("machine \"server\" {\n  min = 9\n}\n")}, nil); err == nil || !strings.Contains(err.Error(), "403") {
			t.Errorf("%s: a stranger's write of the description: got %v, want 403", who, err)
		}
		if members, err := stranger.Agent().Members(false); err == nil && len(members) > 0 {
			t.Errorf("%s: a stranger listed %d members", who, len(members))
		}
	}
	// The operator's commands hold the token, and the description is
	// still the one applied.
	out, errOut, code := c.rf("platform", "get")
	if code != 0 || !strings.Contains(out, "min           = 3") {
		t.Errorf("platform get with the cluster's token: exit %d, %s%s", code, out, errOut)
	}
	if out, errOut, code := c.rf("members"); code != 0 || strings.Count(out, "alive") != 3 {
		t.Errorf("members with the cluster's token: exit %d, %s%s", code, out, errOut)
	}
}

// TestSecureAgentActsForTokenHoldersOnly: the endpoints that make an agent
// act (dial a mesh peer) or run backend calls (a plan) refuse a caller
// without the cluster's token, or with another, before they look at the
// request; reading the status needs none.
func TestSecureAgentActsForTokenHoldersOnly(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	c.up(c.writePlatform("platform.hcl", platformSrc(1, 1)))
	c.waitAgree(1, time.Minute, "after up")
	m := c.machines()[0].Config
	agent := func(token string) agentapi.Agent {
		return agentapi.Agent{Host: m.BindAddr, Port: m.HTTPPort, Token: token}
	}
	for _, token := range []string{"", "not-the-token"} {
		err := agentapi.AddMeshPeer(context.Background(), agent(token), "tcp://192.0.2.1:9651")
		var refused *agentapi.AgentRefused
		if !errors.As(err, &refused) || !strings.HasPrefix(refused.Status, "401") {
			t.Errorf("POST %s with token %q: got %v, want 401", agentapi.MeshPeersPath, token, err)
		}
	}
	// A plan observes through the backends, on the leader: token holders
	// only.
	var refused *agentapi.AgentRefused
	if _, err := agentapi.FetchPlan(context.Background(), agent("")); !errors.As(err, &refused) || !strings.HasPrefix(refused.Status, "401") {
		t.Errorf("GET %s without a token: got %v, want 401", agentapi.PlanPath, err)
	}
	// The lock in KV names the machine a moment before its agent starts
	// leading (and answers plans): wait for the agent's own word.
	waitUntil(t, 30*time.Second, "the machine's agent says it leads", func() bool {
		st, err := agentStatus(m)
		return err == nil && st.IsLeader
	})
	if d, err := agentapi.FetchPlan(context.Background(), agent(c.token())); err != nil || len(d.Actions) != 0 {
		t.Errorf("the leader's plan with the token: got %+v, %v; want no action at rest", d, err)
	}
	if _, err := agentStatus(m); err != nil {
		t.Errorf("reading the status without a token: %v", err)
	}
}

// TestSecureDockerNetworkStrangers: a container on the cluster's Docker
// network, as a stranger on a provider's LAN would be, finds no plain HTTP
// on a machine's address; over HTTPS, without a token, it lists no member
// and reads and writes no key. A Consul agent with another gossip key never
// becomes a member. One with the right gossip key, and even the cluster's
// token, but without a certificate of the cluster's CA joins the gossip and
// is refused on RPC: it reads nothing through it.
func TestSecureDockerNetworkStrangers(t *testing.T) {
	t.Parallel()
	c := newDockerCluster(t)
	c.up(strings.Replace(dockerPlatform(c.name, ""), "min           = 3", "min           = 1", 1))
	v := c.waitAgree(1, 2*time.Minute, "after up")
	server := v.alive[0]
	addr := c.address(server)
	network := dockerRun(t, "inspect", "-f", "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}", server)
	consul, err := nodeconfig.FindConsul()
	if err != nil {
		t.Fatal(err)
	}
	img, err := docker.BuildImage(context.Background(), c.be.Client(), binary, consul)
	if err != nil {
		t.Fatal(err)
	}
	// stranger runs Consul's own CLI in a container of the network. It
	// takes any certificate: what refuses it is the token it lacks.
	stranger := func(args ...string) (string, error) {
		out, err := exec.Command("docker", append([]string{"run", "--rm", "--network", network, "-e", "CONSUL_HTTP_SSL_VERIFY=false",
			"--entrypoint", "/usr/local/bin/consul", img}, args...)...).CombinedOutput()
		return string(out), err
	}
	id := c.identity()
	https := "-http-addr=https://" + net.JoinHostPort(addr, "8501")
	if out, err := stranger("members", "-http-addr=http://"+net.JoinHostPort(addr, "8500")); err == nil || !strings.Contains(out, "connection refused") {
		t.Errorf("plain HTTP on the machine's address: %v, want connection refused:\n%s", err, out)
	}
	// Consul filters what a token may not see: a listing comes back empty.
	if out, _ := stranger("members", https); strings.Contains(out, server) {
		t.Errorf("a stranger listed the members:\n%s", out)
	}
	if out, _ := stranger("kv", "get", https, "-recurse", kvschema.Prefix); strings.Contains(out, kvschema.Prefix) {
		t.Errorf("a stranger listed keys:\n%s", out)
	}
	for _, key := range []string{kvschema.GossipKey, kvschema.Platform} {
		if out, err := stranger("kv", "get", https, key); err == nil || strings.Contains(out, id.GossipKey) || strings.Contains(out, "machine") {
			t.Errorf("a stranger read %s: %v\n%s", key, err, out)
		}
	}
	if out, err := stranger("kv", "put", https, kvschema.Platform, "machine \"server\" {\n  min = 9\n}\n"); err == nil || !strings.Contains(out, "403") {
		t.Errorf("a stranger's write of the description: %v, want 403:\n%s", err, out)
	}

	// The agent's plain port is its own machine's: from another, nothing
	// answers, a token sent in clear included.
	ctx := context.Background()
	for _, path := range []string{agentapi.PlanPath, agentapi.StatusPath, "/metrics", "/"} {
		req, _ := http.NewRequest(http.MethodGet, "http://"+net.JoinHostPort(addr, "9550")+path, nil)
		req.Header.Set("Authorization", "Bearer "+id.ManagementToken)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			t.Errorf("the agent's plain port answered another machine for %s: %s", path, resp.Status)
		} else if !strings.Contains(err.Error(), "connection refused") {
			t.Errorf("the agent's plain port from another machine: %v, want connection refused", err)
		}
	}
	// TestTrustStrangerReadsNothing: over TLS, the cluster's state
	// (topology, types, leader, recent actions, backend errors) is read
	// with a token of the metrics, read-only or operator role only.
	metricsTok, errOut, code := c.rf("token", "create", "--role", "metrics")
	if code != 0 {
		t.Fatalf("token create --role metrics: exit %d\n%s", code, errOut)
	}
	insecure := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	for _, path := range []string{agentapi.StatusPath, "/metrics", "/"} {
		for _, tc := range []struct {
			token string
			want  int
		}{{"", http.StatusUnauthorized}, {strings.TrimSpace(metricsTok), http.StatusOK}} {
			req, _ := http.NewRequest(http.MethodGet, "https://"+net.JoinHostPort(addr, "9551")+path, nil)
			if tc.token != "" {
				req.Header.Set("Authorization", "Bearer "+tc.token)
			}
			resp, err := insecure.Do(req)
			if err != nil {
				t.Fatalf("%s over TLS: %v", path, err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("%s over TLS with token %v: %s, want %d", path, tc.token != "", resp.Status, tc.want)
			}
		}
	}
	tlsAgent, err := agentapi.NewAgent(addr, id.ManagementToken, id.CACert)
	if err != nil || tlsAgent.Port != 9551 {
		t.Fatalf("agent %s: %+v, %v", addr, tlsAgent, err)
	}
	if d, err := agentapi.FetchPlan(ctx, tlsAgent); err != nil || len(d.Actions) != 0 {
		t.Errorf("the leader's plan over TLS with the token: %+v, %v; want no action at rest", d, err)
	}
	var refused *agentapi.AgentRefused
	noToken := tlsAgent
	noToken.Token = ""
	if _, err := agentapi.FetchPlan(ctx, noToken); !errors.As(err, &refused) || !strings.HasPrefix(refused.Status, "401") {
		t.Errorf("a plan over TLS without the token: %v, want 401", err)
	}
	otherCA, err := pki.NewCA("other")
	if err != nil {
		t.Fatal(err)
	}
	impostor := tlsAgent
	impostor.CACert = otherCA.CertPEM
	if _, err := agentapi.FetchPlan(ctx, impostor); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("a client expecting another CA talked to the agent: %v", err)
	}

	// Two Consul agents dial the server's gossip: one with another key,
	// one with the cluster's key and token but no certificate.
	otherKey, err := identity.NewGossipKey()
	if err != nil {
		t.Fatal(err)
	}
	agent := func(name, key string) {
		dockerRun(t, "run", "-d", "--name", name, "--network", network, "--label", "raptiformica.test="+c.name, "--entrypoint", "/usr/local/bin/consul", img,
			"agent", "-node="+name, "-data-dir=/tmp/consul", "-bind={{ GetPrivateIP }}", "-retry-join="+addr, "-retry-interval=1s", "-encrypt="+key)
		t.Cleanup(func() {
			if t.Failed() {
				dumpContainer(t, name)
			}
			_ = exec.Command("docker", "rm", "-f", name).Run()
		})
	}
	wrongKey, noCert := c.name+"-wrong-key", c.name+"-no-cert"
	agent(wrongKey, otherKey)
	agent(noCert, id.GossipKey)
	cl := c.client()
	members := func() map[string]bool {
		ms, _ := cl.Agent().Members(false)
		out := map[string]bool{}
		for _, m := range ms {
			out[m.Name] = true
		}
		return out
	}
	// The one with the key joins the gossip: the other has had as long.
	poll(time.Minute, func() bool { return members()[noCert] })
	if !members()[noCert] {
		t.Fatalf("an agent with the cluster's gossip key did not join the gossip in a minute: the test proves nothing")
	}
	if members()[wrongKey] {
		t.Errorf("an agent with another gossip key is a member")
	}
	out, err := exec.Command("docker", "exec", noCert, "/usr/local/bin/consul", "kv", "get", "-token="+id.ManagementToken, kvschema.GossipKey).CombinedOutput()
	if err == nil || strings.Contains(string(out), id.GossipKey) {
		t.Errorf("an agent without a certificate read the KV through RPC: %v\n%s", err, out)
	}
	t.Logf("the agent without a certificate: %s", strings.TrimSpace(string(out)))
}

// TestSecureJoinTokens: a machine joins by hand with a token from `token
// create`, checking the member's CA by the token's hash first: it gets its
// node config (certificate, token, gossip key) and becomes a member, of
// the token's type (by default the description's client type), recorded
// by the server. A token naming another CA stops before anything is sent
// (the member counts no join request); an expired token, a revoked one and
// a spent one are refused; a server's token is made only when named, with
// a warning.
func TestSecureJoinTokens(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	c.up(c.writePlatform("platform.hcl", platformWith(1, 1, "2s", `machine "worker" {
  min      = 0
  max      = 5
  backends = ["local"]
}
`, false)))
	c.waitAgree(1, time.Minute, "after up")
	server := c.machines()[0].Config
	member := fmt.Sprintf("%s:%d", server.BindAddr, server.HTTPSPort)
	var warned string
	create := func(args ...string) string {
		out, errOut, code := c.rf(append([]string{"token", "create"}, args...)...)
		if code != 0 {
			t.Fatalf("token create %v: exit %d\n%s%s", args, code, out, errOut)
		}
		warned = errOut
		return strings.TrimSpace(out)
	}
	dir := t.TempDir()
	joinAt := func(dir, tok string) (string, error) {
		out, err := exec.Command(binary, "join", "--token", tok, member, "--type", "worker", "--config", filepath.Join(dir, "agent.json"),
			"--data-dir", filepath.Join(dir, "data"), "--bind", testconsul.FreeIP(), "--timeout", "20s").CombinedOutput()
		return string(out), err
	}
	join := func(tok string) (string, error) { return joinAt(dir, tok) }
	joins := func() float64 {
		return scrape(t, fmt.Sprintf("http://%s:%d/metrics", server.BindAddr, server.HTTPPort), `raptiformica_join_requests_total{result="joined"}`) +
			scrape(t, fmt.Sprintf("http://%s:%d/metrics", server.BindAddr, server.HTTPPort), `raptiformica_join_requests_total{result="refused"}`)
	}

	// Another cluster's CA: refused before a word is sent.
	tok := create("--ttl", "10m")
	parts := strings.Split(tok, ".")
	parts[1] = strings.Repeat("0", 64)
	if out, err := join(strings.Join(parts, ".")); err == nil || !strings.Contains(out, "nothing was sent") {
		t.Errorf("join with another CA's hash: %v\n%s", err, out)
	}
	if n := joins(); n != 0 {
		t.Errorf("the member counted %v join requests from a machine expecting another CA", n)
	}

	// Expired, and revoked.
	short := create("--ttl", "1s")
	time.Sleep(1500 * time.Millisecond)
	if out, err := join(short); err == nil || !strings.Contains(out, "expired") {
		t.Errorf("join with an expired token: %v\n%s", err, out)
	}
	revoked := create()
	id := strings.Split(revoked, ".")[2]
	if out, errOut, code := c.rf("token", "revoke", id); code != 0 {
		t.Fatalf("token revoke: exit %d\n%s%s", code, out, errOut)
	}
	if out, _, _ := c.rf("token", "list"); strings.Contains(out, id) {
		t.Errorf("token list shows the revoked token:\n%s", out)
	}
	if out, err := join(revoked); err == nil || !strings.Contains(out, "revoked") {
		t.Errorf("join with a revoked token: %v\n%s", err, out)
	}

	if strings.Contains(warned, "warning") || !strings.Contains(warned, "type worker, 1 use") {
		t.Errorf("token create without --type: %q, want a worker's token of one use, no warning", warned)
	}
	create("--type", "server")
	if !strings.Contains(warned, "warning") || !strings.Contains(warned, "CA key") {
		t.Errorf("token create --type server: %q, want a warning", warned)
	}

	// The token: a node config, then a member; then it is spent.
	out, err := join(tok)
	if err != nil || !strings.Contains(out, "joined as worker-") {
		t.Fatalf("join with the token: %v\n%s", err, out)
	}
	if out, err := joinAt(t.TempDir(), tok); err == nil || !strings.Contains(out, "used up") {
		t.Errorf("a second join with a token of one use: %v\n%s", err, out)
	}
	if out, _, _ := c.rf("token", "list"); !strings.Contains(out, "worker, used up") {
		t.Errorf("token list does not show the token used up:\n%s", out)
	}
	cfgFile := filepath.Join(dir, "agent.json")
	if st, err := os.Stat(cfgFile); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("the node config: %v, mode %v; want 0600", err, st.Mode().Perm())
	}
	cfg, err := nodeconfig.Read(cfgFile)
	if err != nil || cfg.TLS == nil || cfg.ACLToken == "" || cfg.Encrypt == "" {
		t.Fatalf("the node config: %+v, %v", cfg, err)
	}
	agent := exec.Command(binary, "agent", "--config", cfgFile)
	agentLog, _ := os.Create(filepath.Join(dir, "agent.log"))
	agent.Stdout, agent.Stderr = agentLog, agentLog
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = agent.Process.Signal(os.Interrupt)
		_, _ = agent.Process.Wait()
		if t.Failed() {
			dumpMachineDir(t, "the joined agent", dir)
		}
	})
	if !poll(time.Minute, func() bool { return memberAlive(c.client(), cfg.MachineID) }) {
		t.Fatalf("%s joined with a token is not an alive member after a minute", cfg.MachineID)
	}

	// A client never leads: it holds a token of its own, which reads the
	// description and writes no inventory record, not even its own (the
	// server that joined it wrote that), and no CA key.
	if cfg.ACLToken == c.token() || cfg.TLS.CAKey != "" {
		t.Errorf("a client machine got the cluster's token or the CA key")
	}
	own, err := consulclient.New(consulclient.Target{Host: server.BindAddr, HTTPPort: server.ConsulHTTPPort, Token: cfg.ACLToken})
	if err != nil {
		t.Fatal(err)
	}
	if pair, _, err := own.KV().Get(kvschema.Platform, nil); err != nil || pair == nil {
		t.Errorf("the client's token reads no description: %v", err)
	}
	// The server recorded the machine, joined by hand, of the token's type
	// (the leader has marked it joined since).
	if pair, _, err := own.KV().Get(kvschema.Inventory+cfg.MachineID, nil); err != nil || pair == nil ||
		!strings.Contains(string(pair.Value), `"backend":"by-hand"`) || !strings.Contains(string(pair.Value), `"type":"worker"`) {
		t.Errorf("the record of the machine joined by hand: %v, %v", pair, err)
	}
	for key, want := range map[string]bool{kvschema.Inventory + cfg.MachineID: false, kvschema.Inventory + server.MachineID: false, kvschema.Platform: false, kvschema.Leader: false} {
		pair, _, err := own.KV().Get(key, nil)
		if err != nil || pair == nil {
			if want {
				t.Errorf("read %s with the client's token: %v", key, err)
			}
			continue
		}
		_, err = own.KV().Put(pair, nil)
		if (err == nil) != want {
			t.Errorf("write %s with the client's token: %v, want allowed=%v", key, err, want)
		}
	}
}

// scrape reads one sample of a Prometheus text page; 0 when absent.
func scrape(t *testing.T, url, sample string) float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f
		}
	}
	return 0
}

// TestSecureRoleTokens: tokens for people and programs (`token create
// --role`). A read-only token reads the description, the members and the
// status, but no secret, and Consul refuses its write of the description;
// a metrics token reads the catalog (what Prometheus needs) and no key; an
// operator's token does everything, making an agent act included. A
// revoked token reads nothing.
func TestSecureRoleTokens(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	plat := c.writePlatform("platform.hcl", platformSrc(1, 1))
	c.up(plat)
	c.waitAgree(1, time.Minute, "after up")
	create := func(role string) string {
		out, errOut, code := c.rf("token", "create", "--role", role)
		if code != 0 || len(strings.TrimSpace(out)) != 36 {
			t.Fatalf("token create --role %s: exit %d\n%s%s", role, code, out, errOut)
		}
		return strings.TrimSpace(out)
	}
	ro, metrics, op := create("read-only"), create("metrics"), create("operator")
	as := func(tok string, args ...string) (string, int) {
		saved := c.env
		c.env = append(append([]string(nil), c.env...), "CONSUL_HTTP_TOKEN="+tok)
		defer func() { c.env = saved }()
		out, errOut, code := c.rf(args...)
		return out + errOut, code
	}
	client := func(tok string) *api.Client {
		m := c.machines()[0].Config
		cl, err := consulclient.New(consulclient.Target{Host: m.BindAddr, HTTPPort: m.ConsulHTTPPort, Token: tok})
		if err != nil {
			t.Fatal(err)
		}
		return cl
	}

	if out, code := as(ro, "platform", "get"); code != 0 || !strings.Contains(out, `machine "server"`) {
		t.Errorf("platform get with a read-only token: exit %d\n%s", code, out)
	}
	if out, code := as(ro, "members"); code != 0 || !strings.Contains(out, "alive") {
		t.Errorf("members with a read-only token: exit %d\n%s", code, out)
	}
	if out, code := as(ro, "platform", "apply", plat); code == 0 || !strings.Contains(out, "Permission denied") {
		t.Errorf("platform apply with a read-only token: exit %d, want Consul's refusal\n%s", code, out)
	}
	for _, key := range []string{kvschema.GossipKey, kvschema.MeshSecret} {
		if _, _, err := client(ro).KV().Get(key, nil); err == nil || !strings.Contains(err.Error(), "403") {
			t.Errorf("read-only token reads %s: %v, want 403", key, err)
		}
	}

	// The agent's service reaches the catalog by Consul's anti-entropy,
	// a moment after the machine is up: seen first with the cluster's token.
	poll(30*time.Second, func() bool {
		svcs, _, err := c.client().Catalog().Service("raptiformica", "", nil)
		return err == nil && len(svcs) == 1
	})
	if svcs, _, err := client(metrics).Catalog().Service("raptiformica", "", nil); err != nil || len(svcs) != 1 {
		t.Errorf("the catalog with a metrics token: %d entries, %v; want the agent", len(svcs), err)
	}
	if pair, _, err := client(metrics).KV().Get(kvschema.Platform, nil); err == nil && pair != nil {
		t.Errorf("a metrics token read the description")
	}

	if out, code := as(op, "platform", "apply", plat); code != 0 {
		t.Errorf("platform apply with an operator's token: exit %d\n%s", code, out)
	}
	m := c.machines()[0].Config
	if _, err := agentapi.FetchPlan(context.Background(), agentapi.Agent{Host: m.BindAddr, Port: m.HTTPPort, Token: op}); err != nil {
		t.Errorf("an operator's token asking the leader for a plan: %v", err)
	}
	if _, err := agentapi.FetchPlan(context.Background(), agentapi.Agent{Host: m.BindAddr, Port: m.HTTPPort, Token: ro}); err == nil {
		t.Errorf("a read-only token made the agent plan")
	}

	out, _, _ := c.rf("token", "list")
	for _, role := range []string{"read-only", "metrics", "operator"} {
		if !strings.Contains(out, role) {
			t.Errorf("token list does not show the %s token:\n%s", role, out)
		}
	}
	self, _, err := client(ro).ACL().TokenReadSelf(nil)
	if err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := c.rf("token", "revoke", self.AccessorID); code != 0 {
		t.Fatalf("token revoke: exit %d\n%s%s", code, out, errOut)
	}
	if out, code := as(ro, "platform", "get"); code == 0 {
		t.Errorf("platform get with a revoked token: exit 0\n%s", out)
	}
}
