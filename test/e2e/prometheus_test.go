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
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/raptiformica/raptiformica/internal/nodeconfig"
)

const promDir = "../../deploy/prometheus"

const fromPrometheus = "scripts/prometheus.sh builds it"

func TestPrometheusRules(t *testing.T) {
	promtool := needTool(t, "promtool", fromPrometheus)
	for _, args := range [][]string{
		{"check", "rules", "recording.rules.yml", "alerts.rules.yml"},
		{"check", "config", "prometheus.yml"},
		{"test", "rules", "alerts.test.yml"},
	} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = promDir
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

	// The shipped config, pointed at one member's Consul and made quick.
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
	// Prometheus holds a token of the metrics role, as the README says:
	// it reads the catalog, and nothing else.
	metricsToken, errOut, code := c.rf("token", "create", "--role", "metrics")
	if code != 0 {
		t.Fatalf("token create --role metrics: exit %d\n%s", code, errOut)
	}
	tokenFile := filepath.Join(dir, "consul.token")
	if err := os.WriteFile(tokenFile, []byte(metricsToken), 0o600); err != nil {
		t.Fatal(err)
	}
	r := strings.NewReplacer(`server: "127.0.0.1:8500"`, fmt.Sprintf(`server: "%s:%d"`, m.BindAddr, m.ConsulHTTPPort),
		"/etc/prometheus/raptiformica-consul.token", tokenFile,
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
