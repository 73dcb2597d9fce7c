package provision

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/pkg/sftp"

	"github.com/raptiformica/raptiformica/internal/arch"
	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/pki"
)

// Where adoption installs a node. /usr/local, not the package's /usr: a
// machine may hold the package too, and the two never overwrite each other.
const (
	RemoteBinary     = "/usr/local/bin/raptiformica"
	RemoteConsul     = "/usr/local/lib/raptiformica/consul"
	RemoteConfig     = "/etc/raptiformica/agent.json"
	RemoteDataDir    = "/var/lib/raptiformica"
	RemoteUnit       = "/etc/systemd/system/raptiformica.service"
	RemoteSupervisor = "/usr/local/lib/raptiformica/supervise"
)

// AdoptedNode is n as it runs on a machine adopted at h: the installed
// paths, and bound to the address it was reached at when that is an IPv4
// address (else to its first non-loopback one).
func AdoptedNode(n nodeconfig.Config, h Host) nodeconfig.Config {
	n.DataDir, n.ClusterDir, n.ConsulBinary = RemoteDataDir, RemoteDataDir, RemoteConsul
	n.BindAddr = nodeconfig.BindAuto
	if ip := net.ParseIP(h.Addr); ip != nil && ip.To4() != nil {
		n.BindAddr = h.Addr
	}
	return n
}

// keptTLS is the certificate a re-adopted machine keeps: its own, while it
// is of the cluster's CA, for the same role, and good for a month more. A
// new one would change its config, and restart its node, for nothing.
func keptTLS(old, node nodeconfig.Config) *nodeconfig.TLS {
	if old.TLS == nil || node.TLS == nil || old.TLS.CACert != node.TLS.CACert || old.ConsulServer != node.ConsulServer {
		return node.TLS
	}
	cert, err := pki.ParseCert(old.TLS.Cert)
	if err != nil || cert.Subject.CommonName != old.MachineID || time.Until(cert.NotAfter) < 30*24*time.Hour {
		return node.TLS
	}
	keep := *old.TLS
	keep.CAKey = node.TLS.CAKey
	return &keep
}

// Adopter turns a machine reachable over SSH into a node: it uploads the
// binaries, writes the agent's config, installs and starts the service and
// waits until the node is an alive member (the machine type's bootstrap
// steps are provisioners, which its agent runs on itself; see Self). Every step first looks at what is there, so adopting a machine
// that is already right changes nothing.
type Adopter struct {
	Dialer Dialer
	// Artifacts are the binaries uploaded, the pair built for the
	// machine's architecture.
	Artifacts arch.Artifacts
	// Arch, when set, is the architecture (Go's name) the machine must
	// have: a backend that says which machines it makes (its arch
	// setting, which placement trusts) refuses any other.
	Arch string
	// Unit is the systemd unit installed where systemd runs; its ExecStart
	// names RemoteBinary.
	Unit []byte
	// Joined reports whether the machine is an alive member of the
	// cluster; Adopt waits for it last. Nil skips the wait.
	Joined func(ctx context.Context, machineID string) (bool, error)
	// Progress, when set, is told each step as it ends.
	Progress func(Step)
	// StepTimeout bounds each remote step (default 5 minutes).
	StepTimeout time.Duration
}

// AdoptSpec is one machine to adopt.
type AdoptSpec struct {
	Host Host
	// Node is the agent's config on the machine.
	Node nodeconfig.Config
	// KeepID keeps the machine ID of a node of the same cluster and type
	// that the machine already runs, so that adopting it again is a no-op.
	// A backend that has recorded Node's ID before the adoption leaves it
	// off.
	KeepID bool
	// Configure, when set, builds the node config once the machine's ID
	// is known (its own, when KeepID keeps it), so that the credentials
	// made for it (an ACL token of its own) name the ID it takes; Node
	// then only gives the ID to propose, the cluster and the type.
	Configure func(ctx context.Context, machineID string) (nodeconfig.Config, error)
	// JoinTimeout bounds the wait for the node to join (default 2 minutes).
	JoinTimeout time.Duration
}

// Step is one adoption step and what it did.
type Step struct {
	Host    Host
	Name    string
	Changed bool
	Detail  string
}

func (s Step) String() string {
	what := "ok"
	if s.Changed {
		what = "changed"
	}
	if s.Detail != "" {
		what += ": " + s.Detail
	}
	return fmt.Sprintf("%s %-10s %s", s.Host, s.Name, what)
}

// StepError is an adoption that failed: the host, the step and why.
type StepError struct {
	Host Host
	Step string
	Err  error
}

func (e *StepError) Error() string { return fmt.Sprintf("adopt %s: %s: %v", e.Host, e.Step, e.Err) }
func (e *StepError) Unwrap() error { return e.Err }

// Result is what an adoption did.
type Result struct {
	Node  nodeconfig.Config
	Steps []Step
	// Changed is false when the machine was already right.
	Changed bool
}

// remote is one adoption in progress.
type remote struct {
	a       *Adopter
	conn    *Conn
	h       Host
	sudo    bool
	res     *Result
	ctx     context.Context
	timeout time.Duration
}

// Adopt provisions the machine. On failure it returns a *StepError naming
// the host and the step; a node it started in this call is stopped again,
// so nothing half-made keeps running.
func (a *Adopter) Adopt(ctx context.Context, spec AdoptSpec) (Result, error) {
	res := Result{Node: spec.Node}
	h := spec.Host
	timeout := a.StepTimeout
	if timeout == 0 {
		timeout = 5 * time.Minute
	}
	fail := func(step string, err error) (Result, error) { return res, &StepError{Host: h, Step: step, Err: err} }

	dctx, cancel := context.WithTimeout(ctx, timeout)
	conn, err := a.Dialer.Dial(dctx, h)
	cancel()
	if err != nil {
		return fail("connect", err)
	}
	defer conn.Close()
	r := &remote{a: a, conn: conn, h: h, sudo: h.User != "root", res: &res, ctx: ctx, timeout: timeout}
	r.step("connect", false, string(conn.Client.ServerVersion()))

	sys, err := r.detect()
	if err != nil {
		return fail("detect", err)
	}
	if err := r.checkSpace(sys); err != nil {
		return fail("disk", err)
	}
	// A machine that already runs a node of this cluster keeps its ID.
	old, err := r.readConfig()
	keep := spec.KeepID && err == nil && old.MachineID != "" && old.Cluster == spec.Node.Cluster && old.MachineType == spec.Node.MachineType
	if keep {
		res.Node.MachineID = old.MachineID
	}
	if spec.Configure != nil {
		n, err := spec.Configure(ctx, res.Node.MachineID)
		if err != nil {
			return fail("config", err)
		}
		res.Node = n
	}
	if keep {
		res.Node.TLS = keptTLS(old, res.Node)
	}
	changedBin, err := r.upload(sys.binary, RemoteBinary)
	if err != nil {
		return fail("upload", err)
	}
	changedConsul, err := r.upload(sys.consul, RemoteConsul)
	if err != nil {
		return fail("upload", err)
	}
	changedCfg, err := r.writeConfig(res.Node)
	if err != nil {
		return fail("config", err)
	}
	started, err := r.service(sys.systemd, changedBin || changedConsul || changedCfg)
	if err != nil {
		return fail("service", err)
	}
	stopOnFailure := func(step string, err error) (Result, error) {
		if started {
			r.stop(sys.systemd)
		}
		return fail(step, err)
	}
	if a.Joined != nil {
		jt := spec.JoinTimeout
		if jt == 0 {
			jt = 2 * time.Minute
		}
		if err := r.waitJoined(res.Node.MachineID, jt); err != nil {
			return stopOnFailure("join", err)
		}
	}
	return res, nil
}

func (r *remote) step(name string, changed bool, detail string) {
	s := Step{Host: r.h, Name: name, Changed: changed, Detail: detail}
	r.res.Steps = append(r.res.Steps, s)
	r.res.Changed = r.res.Changed || changed
	if r.a.Progress != nil {
		r.a.Progress(s)
	}
}

// run runs argv on the machine, as root (through sudo -n for other users).
func (r *remote) run(argv []string, stdin []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(r.ctx, r.timeout)
	defer cancel()
	if r.sudo {
		argv = append([]string{"sudo", "-n", "--"}, argv...)
	}
	return r.conn.Run(ctx, argv, stdin)
}

// sh runs a shell script on the machine; args are $1.. in it, never
// pasted into the script.
func (r *remote) sh(script string, args ...string) ([]byte, error) {
	return r.run(append([]string{"/bin/sh", "-c", script, "sh"}, args...), nil)
}

// system is what detect found on the machine, and the binaries for it.
type system struct {
	arch           string
	systemd        bool
	binary, consul string
}

func (r *remote) detect() (system, error) {
	var sys system
	out, err := r.sh(`uname -s -m; if [ -d /run/systemd/system ]; then echo systemd; else echo no-systemd; fi; . /etc/os-release 2>/dev/null && echo "$PRETTY_NAME"`)
	if err != nil {
		var re *RunError
		if r.sudo && errors.As(err, &re) && strings.Contains(re.Stderr, "sudo") {
			return sys, fmt.Errorf("user %s cannot run commands as root with sudo -n (passwordless sudo is needed): %w", r.h.User, err)
		}
		return sys, err
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	f := strings.Fields(lines[0])
	if len(f) != 2 || f[0] != "Linux" {
		return sys, fmt.Errorf("unsupported system %q: raptiformica runs on Linux", lines[0])
	}
	sys.arch = arch.FromUname(f[1])
	if sys.arch == "" {
		return sys, fmt.Errorf("%w for architecture %s (none of Go's runs there): raptiformica is built for %s; nothing was installed", arch.ErrNoBuild, f[1], strings.Join(arch.Known, ", "))
	}
	if r.a.Arch != "" && sys.arch != r.a.Arch {
		return sys, fmt.Errorf("architecture %s is linux/%s, and the backend's machines are to be linux/%s (its arch setting); nothing was installed", f[1], sys.arch, r.a.Arch)
	}
	if sys.binary, sys.consul, err = r.a.Artifacts.For(sys.arch); err != nil {
		return sys, fmt.Errorf("architecture %s: %w; nothing was installed", f[1], err)
	}
	sys.systemd = len(lines) > 1 && lines[1] == "systemd"
	detail := "linux/" + sys.arch
	if len(lines) > 2 {
		detail += ", " + lines[2]
	}
	if sys.systemd {
		detail += ", systemd"
	} else {
		detail += ", no systemd (supervisor fallback)"
	}
	r.step("detect", false, detail)
	return sys, nil
}

// checkSpace refuses a machine whose disk cannot take the binaries, before
// anything is written.
func (r *remote) checkSpace(sys system) error {
	var need int64 = 16 << 20 // config, logs and Consul's first writes
	for _, f := range []string{sys.binary, sys.consul} {
		st, err := os.Stat(f)
		if err != nil {
			return fmt.Errorf("local binary: %w", err)
		}
		need += 2 * st.Size() // the staged copy and the installed one
	}
	out, err := r.sh(`df -Pk "$1" | awk 'NR==2 { print $4 }'`, "/usr/local")
	if err != nil {
		return err
	}
	kb, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil {
		return fmt.Errorf("df gave %q", strings.TrimSpace(string(out)))
	}
	if kb*1024 < need {
		return fmt.Errorf("disk full: /usr/local has %d MiB free, %d MiB needed; nothing was installed", kb>>10, need>>20)
	}
	r.step("disk", false, fmt.Sprintf("%d MiB free", kb>>10))
	return nil
}

func sha256File(name string) (string, error) {
	f, err := os.Open(name)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// remoteSHA256 is the checksum of a file on the machine, "" when missing.
func (r *remote) remoteSHA256(p string) (string, error) {
	out, err := r.sh(`if [ -f "$1" ]; then sha256sum "$1"; fi`, p)
	if err != nil {
		return "", err
	}
	f := strings.Fields(string(out))
	if len(f) == 0 {
		return "", nil
	}
	return f[0], nil
}

// upload puts a local file at dst on the machine, unless the same bytes
// are there: staged with SFTP next to nothing that runs, checked against
// its checksum, then moved into place in one step.
func (r *remote) upload(src, dst string) (bool, error) {
	sum, err := sha256File(src)
	if err != nil {
		return false, fmt.Errorf("local %s: %w", src, err)
	}
	have, err := r.remoteSHA256(dst)
	if err != nil {
		return false, err
	}
	if have == sum {
		r.step("upload", false, dst+" sha256 "+sum[:12])
		return false, nil
	}
	// Many requests in flight: one at a time, a link with any latency (a
	// jump host, a VPS abroad) moves a few MB/s.
	sc, err := sftp.NewClient(r.conn.Client, sftp.UseConcurrentWrites(true), sftp.MaxConcurrentRequestsPerFile(64))
	if err != nil {
		return false, fmt.Errorf("sftp: %w", err)
	}
	defer sc.Close()
	staged := path.Join("/var/tmp", fmt.Sprintf(".raptiformica-%s-%d", path.Base(dst), time.Now().UnixNano()))
	if err := sftpPut(sc, src, staged); err != nil {
		_ = sc.Remove(staged)
		return false, fmt.Errorf("sftp %s: %w", staged, err)
	}
	got, err := r.remoteSHA256(staged)
	if err != nil || got != sum {
		_ = sc.Remove(staged)
		return false, fmt.Errorf("uploaded %s has sha256 %q, want %s (err %v)", dst, got, sum, err)
	}
	if _, err := r.sh(`mkdir -p "$(dirname "$2")" && install -m 0755 "$1" "$2.new" && mv -f "$2.new" "$2"; rc=$?; rm -f "$1"; exit $rc`, staged, dst); err != nil {
		return false, err
	}
	r.step("upload", true, dst+" sha256 "+sum[:12])
	return true, nil
}

func sftpPut(sc *sftp.Client, src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := sc.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL)
	if err != nil {
		return err
	}
	if _, err := out.ReadFrom(in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func (r *remote) readConfig() (nodeconfig.Config, error) {
	var c nodeconfig.Config
	out, err := r.sh(`if [ -f "$1" ]; then cat "$1"; fi`, RemoteConfig)
	if err != nil || len(out) == 0 {
		return c, errors.New("no config")
	}
	err = json.Unmarshal(out, &c)
	return c, err
}

// writeFile puts content at p (mode 0600 under umask 077) unless it is
// there already.
func (r *remote) writeFile(p string, content []byte, mode string) (bool, error) {
	sum := sha256.Sum256(content)
	have, err := r.remoteSHA256(p)
	if err != nil {
		return false, err
	}
	if have == hex.EncodeToString(sum[:]) {
		return false, nil
	}
	_, err = r.run([]string{"/bin/sh", "-c", `umask 077 && mkdir -p "$(dirname "$1")" && cat > "$1.new" && chmod "$2" "$1.new" && mv -f "$1.new" "$1"`, "sh", p, mode}, content)
	return err == nil, err
}

func (r *remote) writeConfig(c nodeconfig.Config) (bool, error) {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return false, err
	}
	changed, err := r.writeFile(RemoteConfig, append(b, '\n'), "0600")
	if err != nil {
		return false, err
	}
	r.step("config", changed, RemoteConfig+" ("+c.MachineID+")")
	return changed, nil
}

// supervisor keeps the agent running where there is no systemd: it starts
// it again two seconds after it exits. It does not start it at boot; the
// machine's own init has to run it for that.
const supervisor = `#!/bin/sh
# raptiformica supervisor, for machines without systemd: restarts the agent
# when it exits. Installed by raptiformica adopt.
echo $$ > ` + RemoteDataDir + `/supervise.pid
trap 'kill "$agent" 2>/dev/null; wait "$agent"; exit 0' TERM INT
while :; do
	` + RemoteBinary + ` agent -config ` + RemoteConfig + ` >>` + RemoteDataDir + `/agent.log 2>&1 &
	agent=$!
	echo "$agent" > ` + RemoteDataDir + `/agent.pid
	wait "$agent"
	sleep 2
done
`

// service installs and starts the agent's service, restarting it when
// restart is set (its binary or config changed). It reports whether it
// started the agent.
func (r *remote) service(systemd, restart bool) (bool, error) {
	if _, err := r.sh(`mkdir -p "$1" && chmod 0700 "$1"`, RemoteDataDir); err != nil {
		return false, err
	}
	if systemd {
		changed, err := r.writeFile(RemoteUnit, r.a.Unit, "0644")
		if err != nil {
			return false, err
		}
		out, err := r.sh(`systemctl daemon-reload && systemctl enable raptiformica.service >/dev/null 2>&1
if [ "$1" = yes ] || ! systemctl is-active --quiet raptiformica.service; then
	systemctl restart raptiformica.service && echo started
fi`, yesNo(restart || changed))
		if err != nil {
			return false, err
		}
		started := strings.Contains(string(out), "started")
		r.step("service", started || changed, "systemd unit raptiformica.service")
		return started, nil
	}
	if _, err := r.writeFile(RemoteSupervisor, []byte(supervisor), "0755"); err != nil {
		return false, err
	}
	out, err := r.sh(`d="$1"
alive() { [ -f "$d/$2.pid" ] && kill -0 "$(cat "$d/$2.pid")" 2>/dev/null; }
if ! alive "$d" supervise; then
	setsid "$3" </dev/null >/dev/null 2>&1 &
	echo started
elif [ "$4" = yes ] && alive "$d" agent; then
	kill "$(cat "$d/agent.pid")" && echo restarted
fi`, RemoteDataDir, "", RemoteSupervisor, yesNo(restart))
	if err != nil {
		return false, err
	}
	s := strings.TrimSpace(string(out))
	r.step("service", s != "", "supervisor "+RemoteSupervisor+" "+s)
	return s != "", nil
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// stop stops an agent this adoption started, after a later step failed.
func (r *remote) stop(systemd bool) {
	if systemd {
		_, _ = r.sh(`systemctl disable --now raptiformica.service`)
		return
	}
	// The supervisor takes its agent down with it; wait for the agent to
	// have left, so that nothing writes into what a caller removes next.
	_, _ = r.sh(`for p in supervise agent; do [ -f "$1/$p.pid" ] && kill "$(cat "$1/$p.pid")" 2>/dev/null; done
if [ -f "$1/agent.pid" ]; then
	a=$(cat "$1/agent.pid"); i=0
	while kill -0 "$a" 2>/dev/null && [ $i -lt 150 ]; do sleep 0.1; i=$((i+1)); done
fi
true`, RemoteDataDir)
}

func (r *remote) waitJoined(id string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(r.ctx, timeout)
	defer cancel()
	begin := time.Now()
	var last error
	err := clock.Poll(ctx, clock.Real{}, 500*time.Millisecond, func() (bool, error) {
		ok, err := r.a.Joined(ctx, id)
		if err != nil {
			last = err
		}
		return ok, nil
	})
	if err != nil {
		tail, _ := r.sh(`tail -n 5 "$1/agent.log" 2>/dev/null || journalctl -u raptiformica -n 5 --no-pager 2>/dev/null; true`, RemoteDataDir)
		return fmt.Errorf("%s is not an alive member after %s (last error: %v); agent log: %s", id, timeout, last, strings.TrimSpace(string(tail)))
	}
	r.step("join", false, fmt.Sprintf("%s alive after %s", id, time.Since(begin).Round(100*time.Millisecond)))
	return nil
}

// Remove stops the node a machine runs and deletes its config and state,
// so that it cannot come back as the old machine; the binaries stay for the
// next adoption.
func (a *Adopter) Remove(ctx context.Context, h Host) error {
	timeout := a.StepTimeout
	if timeout == 0 {
		timeout = time.Minute
	}
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := a.Dialer.Dial(dctx, h)
	if err != nil {
		return &StepError{Host: h, Step: "connect", Err: err}
	}
	defer conn.Close()
	r := &remote{a: a, conn: conn, h: h, sudo: h.User != "root", res: &Result{}, ctx: dctx, timeout: timeout}
	out, err := r.sh(`[ -d /run/systemd/system ] && echo systemd; true`)
	if err != nil {
		return &StepError{Host: h, Step: "detect", Err: err}
	}
	r.stop(strings.TrimSpace(string(out)) == "systemd")
	if _, err := r.sh(`rm -f "$1" && rm -rf "$2"`, RemoteConfig, RemoteDataDir); err != nil {
		return &StepError{Host: h, Step: "remove", Err: err}
	}
	return nil
}
