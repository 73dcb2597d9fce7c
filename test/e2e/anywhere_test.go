package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/raptiformica/raptiformica/cluster"
	"github.com/raptiformica/raptiformica/internal/consulclient"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/pki"
	"github.com/raptiformica/raptiformica/reconcile"
)

// anywherePlatform is the lab's description with a backend only host A can
// run (its engine's socket is where only A has it, and the machines it makes
// do not get it), one only host B can run (an exec backend driving the
// docker command line through a socket only B has), and the types asked
// for. The server, the leader, runs on this machine and offers neither.
// Grace is long: a paused host is waited for, not reaped.
func anywherePlatform(l *sshLab, types string) string {
	return fmt.Sprintf(`cluster = "%[1]s"
policy {
  grace_period      = "10m"
  cooldown          = "1s"
  provision_timeout = "3m"
}
backend "host" {
  type     = "local"
  settings = { addresses = "%[2]s" }
}
backend "engine" {
  type     = "docker"
  settings = { socket = "/run/rf-a/docker.sock", share_socket = "false", network = "%[1]s" }
}
backend "job" {
  type = "exec"
  settings = { lead = "false", timeout = "3m", query_timeout = "30s" }
  commands = {
    available = ["/bin/sh", "-c", "test -S /run/rf-b/docker.sock && exec /usr/local/bin/docker -H unix:///run/rf-b/docker.sock info --format '{{.ServerVersion}}'"]
    start_instance = ["/bin/sh", "-euc", <<-EOT
      d() { /usr/local/bin/docker -H unix:///run/rf-b/docker.sock "$@"; }
      tag="raptiformica-anywhere-node:$(cat "$RAPTIFORMICA_BINARY" "$RAPTIFORMICA_CONSUL_BINARY" | sha256sum | cut -c1-12)"
      exec 9>"$RAPTIFORMICA_WORKDIR/../image.lock" && flock 9
      if ! d image inspect "$tag" >/dev/null 2>&1; then
        root="$(mktemp -d)"
        mkdir -p "$root/usr/local/bin" "$root/tmp" "$root/etc/raptiformica"
        cp "$RAPTIFORMICA_BINARY" "$root/usr/local/bin/raptiformica"
        cp "$RAPTIFORMICA_CONSUL_BINARY" "$root/usr/local/bin/consul"
        tar -C "$root" -c . | d import --change 'ENTRYPOINT ["/usr/local/bin/raptiformica"]' \
          --change 'LABEL raptiformica.node-image=1' - "$tag" >/dev/null
        rm -rf "$root"
      fi
      flock -u 9
      name="rf-$RAPTIFORMICA_CLUSTER-$RAPTIFORMICA_MACHINE_ID"
      d create --name "$name" --network "%[1]s" --label "raptiformica.exec=$RAPTIFORMICA_CLUSTER" \
        --label "raptiformica.exec_machine_id=$RAPTIFORMICA_MACHINE_ID" --label raptiformica.test=1 \
        "$tag" agent -config /etc/raptiformica/agent.json >/dev/null
      d cp "$RAPTIFORMICA_AGENT_CONFIG" "$name:/etc/raptiformica/agent.json"
      d start "$name" >/dev/null
    EOT
    ]
    get_hostname = ["/bin/sh", "-c", "exec /usr/local/bin/docker -H unix:///run/rf-b/docker.sock inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' \"rf-$RAPTIFORMICA_CLUSTER-$RAPTIFORMICA_MACHINE_ID\""]
    clean_up_instance_command = ["/bin/sh", "-c", <<-EOT
      out="$(/usr/local/bin/docker -H unix:///run/rf-b/docker.sock rm -f "rf-$RAPTIFORMICA_CLUSTER-$RAPTIFORMICA_MACHINE_ID" 2>&1)" || case "$out" in
        *"No such container"*) ;;
        *) echo "$out" >&2; exit 1 ;;
      esac
    EOT
    ]
    list_instances = ["/bin/sh", "-c", "exec /usr/local/bin/docker -H unix:///run/rf-b/docker.sock ps -a --filter \"label=raptiformica.exec=$RAPTIFORMICA_CLUSTER\" --format '{{.Label \"raptiformica.exec_machine_id\"}} {{.State}}'"]
  }
}
machine "server" {
  min           = 1
  max           = 1
  consul_server = true
  backends      = ["host"]
}
machine "worker" {
  min      = 0
  max      = 5
  backends = ["host"]
}
`, l.network, l.gateway) + types
}

// TestBackendsAnywhere: machines are made by the members that can make
// them, not by the leader. Host A alone reaches a Docker engine, host B
// alone runs the exec backend, and the leader runs neither: a docker
// machine is made by A, an exec machine by B. With A frozen, the status
// says no member offers docker, and a type that may fall through to exec
// gets its machine from B; A back, docker machines are made by A again.
// No machine is made twice.
func TestBackendsAnywhere(t *testing.T) {
	t.Parallel()
	l := newSSHLab(t)
	dockerCLI, err := exec.LookPath("docker")
	if err != nil {
		t.Fatal(err)
	}
	a := l.hostWith(t, 11, "", "-v", "/var/run/docker.sock:/run/rf-a/docker.sock")
	b := l.hostWith(t, 12, "", "-v", "/var/run/docker.sock:/run/rf-b/docker.sock", "-v", dockerCLI+":/usr/local/bin/docker:ro")
	hostID := map[string]string{}
	for _, ip := range []string{a, b} {
		out, errOut, code := l.adopt("root@" + ip)
		if code != 0 {
			t.Fatalf("adopt %s: exit %d\n%s\n%s", ip, code, out, errOut)
		}
		m := regexp.MustCompile(`adopted root@\S+ as (worker-[0-9a-f]+) \(worker\)`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("adopt did not name the machine:\n%s", out)
		}
		hostID[ip] = m[1]
	}
	idA, idB := hostID[a], hostID[b]

	l.apply(t, "anywhere.hcl", anywherePlatform(l, `
machine "boxed" {
  min      = 1
  backends = ["engine", "job"]
}
machine "jobbed" {
  min      = 1
  backends = ["job"]
}
`))
	madeBy := func(typ, backend, host string, n int) func() bool {
		return func() bool {
			got := 0
			for _, r := range l.recordsOf(typ) {
				if r.State == reconcile.StateJoined && r.Backend == backend && r.Host == host {
					got++
				}
			}
			return got == n
		}
	}
	waitUntil(t, 5*time.Minute, "a docker machine made by A and an exec machine made by B", func() bool {
		return madeBy("boxed", "engine", idA, 1)() && madeBy("jobbed", "job", idB, 1)()
	})
	out, _, _ := l.rf("members")
	t.Logf("members:\n%s", out)
	offers := offersOf(t, l)
	// Nor do A and B offer host: its address is the leader's machine's.
	if offers[idA] != "engine" || offers[idB] != "job" {
		t.Errorf("offers: A %q, B %q; want engine on A, job on B", offers[idA], offers[idB])
	}
	for id, o := range offers {
		if strings.HasPrefix(id, "server-") && (strings.Contains(o, "engine") || strings.Contains(o, "job")) {
			t.Errorf("the leader %s offers %q: it must offer neither engine nor job", id, o)
		}
	}
	// The status page shows them too: each member's offers, and who made
	// each machine.
	seed := l.machines()[0].Config
	page := l.readPage(t, seed)
	for _, want := range []string{`<td class="offers">engine</td>`, `<td class="offers">job</td>`, "<td>engine</td><td><code>" + idA + "</code></td>", "<td>job</td><td><code>" + idB + "</code></td>"} {
		if !strings.Contains(page, want) {
			t.Errorf("the status page lacks %q", want)
		}
	}

	// A frozen: nobody offers docker. A type with nowhere else to go
	// waits, saying so; one that may fall through gets B's exec.
	dockerRun(t, "pause", fmt.Sprintf("%s-%d", l.network, 11))
	waitUntil(t, time.Minute, "A is no longer an alive member", func() bool {
		v, err := l.view()
		return err == nil && !contains(v.alive, idA)
	})
	l.apply(t, "anywhere-2.hcl", anywherePlatform(l, `
machine "boxed" {
  min      = 2
  backends = ["engine", "job"]
}
machine "jobbed" {
  min      = 1
  backends = ["job"]
}
machine "crate" {
  min      = 1
  backends = ["engine"]
}
`))
	l.waitWaiting(2*time.Minute, `backend "engine": no member offers it`, `machine "crate": 1 to spawn, but no backend is usable`)
	waitUntil(t, 5*time.Minute, "the second boxed machine falls through to exec on B", madeBy("boxed", "job", idB, 1))

	// A back: docker machines are made by A again.
	dockerRun(t, "unpause", fmt.Sprintf("%s-%d", l.network, 11))
	waitUntil(t, 5*time.Minute, "the crate is made by A once it is back", madeBy("crate", "engine", idA, 1))

	// Every machine once: one container per record, none without.
	recs := map[string]bool{}
	for _, typ := range []string{"boxed", "jobbed", "crate"} {
		for _, r := range l.recordsOf(typ) {
			recs[r.ID] = true
		}
	}
	ids := strings.Fields(dockerRun(t, "ps", "-a", "--filter", "network="+l.network, "--format", `{{.Label "raptiformica.machine_id"}}{{.Label "raptiformica.exec_machine_id"}}`))
	made := map[string]int{}
	for _, id := range ids {
		if id != "" {
			made[id]++
		}
	}
	for id := range recs {
		if made[id] != 1 {
			t.Errorf("machine %s: %d containers, want 1", id, made[id])
		}
	}
	for id, n := range made {
		if !recs[id] {
			t.Errorf("container of machine %s (%d) has no record", id, n)
		}
	}
	if len(recs) != 4 {
		t.Errorf("%d machines of the three types, want 4 (2 boxed, 1 jobbed, 1 crate)", len(recs))
	}
	out, _, _ = l.rf("status")
	t.Logf("status:\n%s", out)
	for _, want := range []string{"backend engine  runs on " + idA + " (not on the leader", "backend job     runs on " + idB + " (not on the leader"} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q", want)
		}
	}
}

// httpGet returns the body of a plain GET, failing the test on any error.
// readPage reads machine m's status page as another member would: over
// TLS with a certificate of the cluster's CA (its plain port is its own
// machine's), or plain on a loopback address.
func (c *testCluster) readPage(t *testing.T, m nodeconfig.Config) string {
	t.Helper()
	if consulclient.IsLoopback(m.BindAddr) {
		return httpGet(t, fmt.Sprintf("http://%s:%d/", m.BindAddr, m.HTTPPort))
	}
	id := c.memberTLS()
	pair, err := tls.X509KeyPair([]byte(id.Cert), []byte(id.Key))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(id.CACert))
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: pool, ServerName: pki.MemberName, Certificates: []tls.Certificate{pair}}}}
	return httpGetWith(t, hc, fmt.Sprintf("https://%s/", net.JoinHostPort(m.BindAddr, strconv.Itoa(m.HTTPSPort))))
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	return httpGetWith(t, &http.Client{Timeout: 10 * time.Second}, url)
}

func httpGetWith(t *testing.T, c *http.Client, url string) string {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s, %v", url, resp.Status, err)
	}
	return string(b)
}

// offersOf reads `raptiformica members --json`: each member's offered
// backends, comma-separated.
func offersOf(t *testing.T, l *sshLab) map[string]string {
	t.Helper()
	out, errOut, code := l.rf("members", "--json")
	var rows []cluster.Member
	if err := json.Unmarshal([]byte(out), &rows); code != 0 || err != nil {
		t.Fatalf("members --json: exit %d, %v\n%s%s", code, err, out, errOut)
	}
	offers := map[string]string{}
	for _, r := range rows {
		offers[r.Name] = strings.Join(r.Offers, ",")
	}
	return offers
}

// TestBackendsAnywhereLeaderMoves: three docker servers, each of which can
// run the docker backend; four workers are asked for and placed across
// them, the leader among them. The leader is killed while another server
// runs one of the spawns: the new leader resumes the order its predecessor
// gave, and no machine is made twice (every container has a record and
// every record one container).
func TestBackendsAnywhereLeaderMoves(t *testing.T) {
	t.Parallel()
	c := newDockerCluster(t)
	c.up(dockerPlatform(c.name, ""))
	v := c.waitAgree(3, 3*time.Minute, "after up")
	src := strings.Replace(dockerPlatform(c.name, ""), `cooldown          = "1s"`, "cooldown          = \"1s\"\n  max_concurrent_spawns = 4", 1) + `
machine "worker" {
  min      = 4
  backends = ["docker"]
}
`
	if out, errOut, code := c.rf("platform", "apply", c.writePlatform("workers.hcl", src)); code != 0 {
		t.Fatalf("apply: %s %s", out, errOut)
	}
	var elsewhere reconcile.Record
	// Its order written, not only its record (or the spawn already done):
	// a leader killed between the two leaves nothing to resume, and the
	// next leader gives the record up.
	waitUntil(t, time.Minute, "a worker's spawn runs on a server that does not lead", func() bool {
		cl := c.client()
		for _, r := range c.recordsOf("worker") {
			if r.Host == "" || r.Host == v.leader || cl == nil {
				continue
			}
			if pair, _, err := cl.KV().Get(kvschema.Work+r.Host+"/"+r.ID, nil); r.State != reconcile.StateSpawning || err == nil && pair != nil {
				elsewhere = r
				return true
			}
		}
		return false
	})
	c.kill(v.leader)
	t.Logf("killed the leader %s while %s was %s on %s", v.leader, elsewhere.ID, elsewhere.State, elsewhere.Host)
	after := c.waitAgree(7, 4*time.Minute, "after the leader was killed mid-spawn", v.leader)
	if r, ok := after.records[elsewhere.ID]; !ok || r.Host != elsewhere.Host {
		t.Errorf("the worker ordered on %s: %+v (present %v), want it made there once", elsewhere.Host, r, ok)
	}
	hosts := map[string]int{}
	for _, r := range c.recordsOf("worker") {
		hosts[r.Host]++
	}
	t.Logf("workers per host: %v", hosts)
	if len(hosts) < 2 {
		t.Errorf("workers per host %v: the four were not spread over the three servers", hosts)
	}
}
