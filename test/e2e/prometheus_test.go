package e2e

// The Prometheus pieces under deploy/prometheus, checked by the tools that
// consume them: promtool on the rules and their unit tests, and a real
// Prometheus scraping a live cluster found through Consul.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/internal/consulclient"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
)

const promDir = "../../deploy/prometheus"

const fromPrometheus = "scripts/prometheus.sh builds it"

func TestPrometheusRules(t *testing.T) {
	promtool := needTool(t, "promtool", fromPrometheus)
	// promtool checks that the files the config names exist: the shipped
	// config is checked as installed, its token and CA where it says.
	dir := t.TempDir()
	for _, f := range []string{"prometheus.yml", "recording.rules.yml", "alerts.rules.yml", "alerts.test.yml"} {
		b, err := os.ReadFile(filepath.Join(promDir, f))
		if err != nil {
			t.Fatal(err)
		}
		b = []byte(strings.NewReplacer("/etc/prometheus/", dir+"/").Replace(string(b)))
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"raptiformica-consul.token", "raptiformica-ca.pem"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, args := range [][]string{
		{"check", "rules", "recording.rules.yml", "alerts.rules.yml"},
		{"check", "config", "prometheus.yml"},
		{"test", "rules", "alerts.test.yml"},
	} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

func TestPrometheusScrapesCluster(t *testing.T) {
	t.Parallel()
	prometheus := needTool(t, "prometheus", fromPrometheus)
	promtool := needTool(t, "promtool", fromPrometheus)
	c := newCluster(t)
	c.up(c.writePlatform("platform.hcl", platformSrc(3, 3)))
	v := c.waitAgree(3, time.Minute, "after up")

	// A live agent's /metrics passes promtool's lint. A follower's: its
	// Consul is also the one Prometheus discovers through, and the leader
	// is killed below.
	var m nodeconfig.Config
	for _, mc := range c.machines() {
		if mc.Config.MachineID == v.follower() {
			m = mc.Config
		}
	}
	resp, err := http.Get(fmt.Sprintf("http://%s:%d/metrics", m.BindAddr, m.HTTPPort))
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := readAll(resp)
	check := exec.Command(promtool, "check", "metrics")
	check.Stdin = bytes.NewReader(metrics)
	if out, err := check.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics on %s: %v\n%s", m.MachineID, err, out)
	}

	addr := runPrometheus(t, c, prometheus, m)
	q := func(expr string) []promSample { return promQuery(addr, expr) }

	// Every agent is found through Consul and scraped; exactly one says it
	// leads, the one holding the lock; the leader's desired and live
	// machines agree.
	agree := func(leader string) bool {
		up := q(`up{job="raptiformica"} == 1`)
		leaders := q(`raptiformica_is_leader == 1`)
		count := q(`raptiformica:leaders:count`)
		desired, live := q(`raptiformica_machines_desired`), q(`raptiformica_machines_live`)
		return len(up) == 3 && len(leaders) == 1 && leaders[0].Metric["machine"] == leader &&
			len(count) == 1 && count[0].Value == 1 &&
			len(desired) == 1 && len(live) == 1 && desired[0].Metric["machine_type"] == "server" &&
			live[0].Metric["machine_type"] == "server" && desired[0].Value == 3 && live[0].Value == 3 &&
			live[0].Metric["machine"] == leader && up[0].Metric["node_type"] == "server"
	}
	waitUntil(t, 90*time.Second, "Prometheus sees 3 agents, one leader, 3 of 3 servers", func() bool { return agree(v.leader) })

	// Every query of the Grafana dashboard is valid and finds series in
	// the live cluster: it names only metrics that exist.
	for _, e := range dashboardExprs(t) {
		expr := strings.ReplaceAll(e, "$cluster", "e2e")
		waitUntil(t, 30*time.Second, "the dashboard query finds series: "+expr, func() bool { return len(q(expr)) > 0 })
	}

	// The leader dies: Prometheus sees one leader again, the new one, and
	// no stale copy of the old one's view.
	old := v.leader
	c.kill(old)
	v = c.waitAgree(3, 2*time.Minute, "after killing leader "+old, old)
	waitUntil(t, 90*time.Second, "Prometheus follows the new leader "+v.leader, func() bool { return agree(v.leader) })
}

// TestTrustServiceRegistrationsSpeakOnlyForTheirNode: a client, with its
// own token on its own Consul, registers more "raptiformica" services on
// its node, pointed elsewhere: one whose meta says it is the server, one
// that says it is the client. Prometheus, on the shipped config, scrapes
// one target per node, at the node's own address and labelled by the
// node: nothing elsewhere is scraped, and only the server's own target is
// labelled as the server.
func TestTrustServiceRegistrationsSpeakOnlyForTheirNode(t *testing.T) {
	t.Parallel()
	prometheus := needTool(t, "prometheus", fromPrometheus)
	c := newCluster(t)
	c.up(c.writePlatform("platform.hcl", platformWith(1, 1, "2s", `machine "worker" {
  min      = 1
  backends = ["local"]
}
`, false)))
	c.waitAgree(2, 2*time.Minute, "after up")
	var server, worker nodeconfig.Config
	for _, m := range c.machines() {
		if m.Config.ConsulServer {
			server = m.Config
		} else {
			worker = m.Config
		}
	}
	if server.MachineID == "" || worker.MachineID == "" {
		t.Fatalf("want a server and a client, got %+v", c.machines())
	}

	// Elsewhere: where the forged services point. It counts the scrapes
	// that reach it, and says it leads.
	var hits atomic.Int32
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		fmt.Fprintln(w, "raptiformica_is_leader 1")
	}))
	t.Cleanup(elsewhere.Close)
	host, portText, _ := net.SplitHostPort(elsewhere.Listener.Addr().String())
	port, _ := strconv.Atoi(portText)

	// The client's own credentials, as an attacker on it holds them.
	cl, err := consulclient.New(consulclient.Target{Host: worker.BindAddr, HTTPPort: worker.ConsulHTTPPort,
		HTTPSPort: worker.ConsulHTTPSPort, Token: worker.ACLToken})
	if err != nil {
		t.Fatal(err)
	}
	forged := []*api.AgentServiceRegistration{
		{ID: "raptiformica-as-server", Name: "raptiformica", Address: host, Port: port,
			Meta: map[string]string{"machine_id": server.MachineID, "machine_type": server.MachineType, "cluster": server.Cluster}},
		{ID: "raptiformica-elsewhere", Name: "raptiformica", Address: host, Port: port,
			Meta: map[string]string{"machine_id": worker.MachineID, "machine_type": worker.MachineType, "cluster": worker.Cluster}},
	}
	for _, f := range forged {
		if err := cl.Agent().ServiceRegister(f); err != nil {
			t.Fatalf("the client registers service %s on its node: %v", f.ID, err)
		}
	}
	waitUntil(t, 30*time.Second, "the catalog holds the forged services", func() bool {
		svcs, _, err := cl.Catalog().Service("raptiformica", "", nil)
		return err == nil && len(svcs) == 2+len(forged)
	})

	addr := runPrometheus(t, c, prometheus, server)
	own := map[string]string{ // machine: its node's address and agent port
		server.MachineID: net.JoinHostPort(server.BindAddr, strconv.Itoa(server.HTTPSPort)),
		worker.MachineID: net.JoinHostPort(worker.BindAddr, strconv.Itoa(worker.HTTPSPort)),
	}
	waitUntil(t, 90*time.Second, "Prometheus scrapes both agents", func() bool {
		n := 0
		for _, s := range promQuery(addr, `up{job="raptiformica"} == 1`) {
			if own[s.Metric["machine"]] == s.Metric["instance"] {
				n++
			}
		}
		return n == 2
	})
	// A few more scrape intervals, for a target elsewhere to be scraped.
	time.Sleep(5 * time.Second)

	var got []string // machine@instance
	for _, tg := range promTargets(t, addr) {
		got = append(got, tg.Labels["machine"]+"@"+tg.Labels["instance"])
	}
	sort.Strings(got)
	want := []string{server.MachineID + "@" + own[server.MachineID], worker.MachineID + "@" + own[worker.MachineID]}
	sort.Strings(want)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Prometheus's targets (machine@instance), -want +got:\n%s", diff)
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("the address the forged services name was scraped %d times, want 0", n)
	}
	for _, s := range promQuery(addr, fmt.Sprintf(`raptiformica_is_leader{machine=%q}`, server.MachineID)) {
		if s.Metric["instance"] != own[server.MachineID] {
			t.Errorf("a series labelled as the server %s comes from %s, not from the server", server.MachineID, s.Metric["instance"])
		}
	}
}

// runPrometheus runs prometheus on the shipped config and rules, pointed at
// machine m's Consul and made quick (1 s scrapes), until the test ends, and
// returns the address of its API.
func runPrometheus(t *testing.T, c *testCluster, prometheus string, m nodeconfig.Config) string {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"recording.rules.yml", "alerts.rules.yml"} {
		b, err := os.ReadFile(filepath.Join(promDir, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := os.ReadFile(filepath.Join(promDir, "prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	// Prometheus holds a token of the metrics role, as docs/security.md says:
	// it reads the catalog, and nothing else.
	metricsToken, errOut, code := c.rf("token", "create", "--role", "metrics")
	if code != 0 {
		t.Fatalf("token create --role metrics: exit %d\n%s", code, errOut)
	}
	tokenFile := filepath.Join(dir, "consul.token")
	if err := os.WriteFile(tokenFile, []byte(metricsToken), 0o600); err != nil {
		t.Fatal(err)
	}
	// And the cluster's CA, with which it checks each agent it scrapes
	// over TLS.
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, []byte(c.identity().CACert), 0o644); err != nil {
		t.Fatal(err)
	}
	r := strings.NewReplacer(`server: "127.0.0.1:8500"`, fmt.Sprintf(`server: "%s:%d"`, m.BindAddr, m.ConsulHTTPPort),
		"/etc/prometheus/raptiformica-consul.token", tokenFile, "/etc/prometheus/raptiformica-ca.pem", caFile,
		"scrape_interval: 15s", "scrape_interval: 1s", "evaluation_interval: 15s", "evaluation_interval: 1s")
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(r.Replace(string(cfg))), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := freeLoopbackPort(t)
	prom := exec.Command(prometheus, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+addr)
	var promLog bytes.Buffer
	prom.Stdout, prom.Stderr = &promLog, &promLog
	if err := prom.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = prom.Process.Kill()
		_ = prom.Wait()
		if t.Failed() {
			t.Logf("prometheus log:\n%s", promLog.String())
		}
	})
	return addr
}

// promTarget is an active target as Prometheus's API shows it.
type promTarget struct {
	Labels map[string]string
}

// promTargets returns Prometheus's active targets.
func promTargets(t *testing.T, addr string) []promTarget {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/api/v1/targets?state=active")
	if err != nil {
		t.Fatal(err)
	}
	b, err := readAll(resp)
	if err != nil {
		t.Fatal(err)
	}
	var body struct {
		Status string
		Data   struct {
			ActiveTargets []promTarget
		}
	}
	if err := json.Unmarshal(b, &body); err != nil || body.Status != "success" {
		t.Fatalf("targets: %v: %s", err, b)
	}
	return body.Data.ActiveTargets
}

type promSample struct {
	Metric map[string]string
	Value  float64
}

// promQuery runs an instant query; it returns nil when Prometheus does not
// answer yet.
func promQuery(addr, expr string) []promSample {
	resp, err := http.Get("http://" + addr + "/api/v1/query?query=" + url.QueryEscape(expr))
	if err != nil {
		return nil
	}
	var body struct {
		Status string
		Data   struct {
			Result []struct {
				Metric map[string]string
				Value  [2]any
			}
		}
	}
	b, _ := readAll(resp)
	if json.Unmarshal(b, &body) != nil || body.Status != "success" {
		return nil
	}
	out := make([]promSample, 0, len(body.Data.Result))
	for _, r := range body.Data.Result {
		s, _ := r.Value[1].(string)
		f, _ := strconv.ParseFloat(s, 64)
		out = append(out, promSample{Metric: r.Metric, Value: f})
	}
	return out
}

func readAll(resp *http.Response) ([]byte, error) {
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, err := buf.ReadFrom(resp.Body)
	return buf.Bytes(), err
}

func freeLoopbackPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func waitUntil(t *testing.T, timeout time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting until %s", timeout, what)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// dashboardExprs are the queries of the shipped Grafana dashboard.
func dashboardExprs(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../../deploy/grafana/raptiformica.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("deploy/grafana/raptiformica.json: %v", err)
	}
	var out []string
	for _, p := range d.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("dashboard panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			out = append(out, tg.Expr)
		}
	}
	return out
}
