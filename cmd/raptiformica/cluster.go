package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/backends/docker"
	"github.com/raptiformica/raptiformica/backends/local"
	"github.com/raptiformica/raptiformica/builtin"
	"github.com/raptiformica/raptiformica/daemon"
	"github.com/raptiformica/raptiformica/internal/fsutil"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/mesh"
	"github.com/raptiformica/raptiformica/reconcile"
	"github.com/raptiformica/raptiformica/rules"
)

// defaultDir is where local clusters live when --dir is not given.
func defaultDir() string {
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "raptiformica")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(os.TempDir(), "raptiformica")
	}
	return filepath.Join(home, ".local", "share", "raptiformica")
}

// target is the cluster a command talks to.
type target struct {
	dir      string
	explicit bool // --dir was given
	// clients are kept per address: each api.Client has its own connection
	// pool, and a new one per poll (up waits minutes) would exhaust Consul's
	// per-client connection limit.
	clients map[string]*api.Client
}

// addTarget gives a command --dir. Given, it wins over $CONSUL_HTTP_ADDR.
func addTarget(c *cobra.Command) *target {
	t := &target{}
	c.Flags().Func("dir", "`folder` of a local cluster (default "+defaultDir()+")", func(s string) error {
		t.dir, t.explicit = s, true
		return nil
	})
	_ = c.MarkFlagDirname("dir")
	return t
}

func (t *target) folder() string {
	d := t.dir
	if d == "" {
		d = defaultDir()
	}
	abs, err := filepath.Abs(d)
	if err != nil {
		return d
	}
	return abs
}

// client connects to the cluster: $CONSUL_HTTP_ADDR unless --dir was given,
// else the Consul of a running machine of the cluster in the folder.
func (t *target) client() (*api.Client, error) {
	if !t.explicit && os.Getenv("CONSUL_HTTP_ADDR") != "" {
		if c := t.clients[""]; c != nil {
			return c, nil
		}
		c, err := api.NewClient(api.DefaultConfig())
		if err == nil {
			t.clients = map[string]*api.Client{"": c}
		}
		return c, err
	}
	addrs, err := t.addresses()
	if err != nil {
		return nil, err
	}
	var lastErr error
	for _, addr := range addrs {
		c := t.clients[addr]
		if c == nil {
			cfg := api.DefaultConfig()
			cfg.Address = addr
			cfg.Scheme = "http"
			if c, err = api.NewClient(cfg); err != nil {
				return nil, err
			}
			if t.clients == nil {
				t.clients = map[string]*api.Client{}
			}
			t.clients[addr] = c
		}
		if leader, err := c.Status().Leader(); err == nil && leader != "" {
			return c, nil
		} else if err != nil {
			lastErr = err
		} else {
			lastErr = errors.New("no Consul leader yet")
		}
	}
	if lastErr != nil {
		return nil, fmt.Errorf("no machine of %s answers: %w", t.folder(), lastErr)
	}
	return nil, fmt.Errorf("no running machine in %s (start one with `raptiformica up --dir %s`)", t.folder(), t.folder())
}

// clusterFile records, in a cluster's folder, which backend its seed runs
// on, so that commands find machines that are not local processes.
type clusterFile struct {
	Cluster     string            `json:"cluster"`
	Backend     string            `json:"backend"`
	BackendType string            `json:"backend_type"`
	Settings    map[string]string `json:"settings,omitempty"`
}

func (t *target) clusterFile() (clusterFile, bool) {
	var cf clusterFile
	b, err := os.ReadFile(filepath.Join(t.folder(), "cluster.json"))
	if err != nil || json.Unmarshal(b, &cf) != nil {
		return cf, false
	}
	return cf, true
}

// dockerBackend returns the docker backend of a cluster seeded in docker.
func (t *target) dockerBackend() (*docker.Backend, bool) {
	cf, ok := t.clusterFile()
	if !ok || cf.BackendType != "docker" {
		return nil, false
	}
	be, err := docker.New(backends.Config{Name: cf.Backend, Settings: cf.Settings}, backends.Env{Cluster: cf.Cluster})
	if err != nil {
		return nil, false
	}
	return be.(*docker.Backend), true
}

// addresses lists the Consul HTTP addresses of the folder's running
// machines: local processes, and containers when the seed was one.
func (t *target) addresses() ([]string, error) {
	ms, err := local.Machines(t.folder())
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range ms {
		if m.Running {
			out = append(out, net.JoinHostPort(m.Config.BindAddr, strconv.Itoa(m.Config.ConsulHTTPPort)))
		}
	}
	if be, ok := t.dockerBackend(); ok {
		insts, err := be.List(context.Background())
		if err != nil {
			return nil, err
		}
		for _, in := range insts {
			if in.Running && in.Address != "" {
				out = append(out, net.JoinHostPort(in.Address, strconv.Itoa(nodeconfig.ConsulHTTPPort)))
			}
		}
	}
	return out, nil
}

// backendEnv is what backends need when the CLI drives them directly.
func (t *target) backendEnv(p *rules.Platform) (backends.Env, error) {
	bin, err := os.Executable()
	if err != nil {
		return backends.Env{}, err
	}
	consul, err := nodeconfig.FindConsul()
	if err != nil {
		return backends.Env{}, err
	}
	return backends.Env{Cluster: p.Cluster, ClusterDir: t.folder(), Binary: bin, ConsulBinary: consul, Logger: hclog.NewNullLogger()}, nil
}

func (t *target) backends(p *rules.Platform) (map[string]backends.Backend, error) {
	env, err := t.backendEnv(p)
	if err != nil {
		return nil, err
	}
	var store *kvschema.Store
	if c, err := t.client(); err == nil {
		store = kvschema.New(c)
	}
	bes, errs := reconcile.NewBackends(builtin.Registry(), p, env, store)
	for _, name := range slices.Sorted(maps.Keys(errs)) {
		return nil, fmt.Errorf("backend %s: %w", name, errs[name])
	}
	return bes, nil
}

func parseOpts() rules.Options { return reconcile.ParseOptions(builtin.Registry()) }

func upCmd() *cobra.Command {
	c := newCommand("up", "boot a local virtual data center and wait for it", nArgs(0, 0),
		"raptiformica up", "raptiformica up --platform deploy/examples/docker.hcl --dir /tmp/dc2")
	t := addTarget(c)
	platformFile := c.Flags().String("platform", "", "platform description (default: 3 Consul servers on the local backend)")
	timeout := c.Flags().Duration("timeout", 5*time.Minute, "how long to wait for the desired members")
	c.RunE = func(c *cobra.Command, _ []string) error {
		return up(c.Context(), t, *platformFile, *timeout, c.OutOrStdout())
	}
	return c
}

func up(ctx context.Context, t *target, platformFile string, timeout time.Duration, out io.Writer) error {
	dir := t.folder()
	addrs, err := t.addresses()
	if err != nil {
		return err
	}
	running := len(addrs)
	var plat *rules.Platform
	if running > 0 {
		fmt.Fprintf(out, "cluster in %s is already up (%d machines running)\n", dir, running)
	} else {
		if plat, err = startSeed(ctx, dir, platformFile, out); err != nil {
			return err
		}
	}
	return waitAndPrint(ctx, t, plat, timeout, out)
}

// waitAndPrint waits up to timeout for every machine type to have its min
// joined, then prints the members.
func waitAndPrint(ctx context.Context, t *target, plat *rules.Platform, timeout time.Duration, out io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := waitConverged(ctx, t, plat, out)
	if err != nil {
		return err
	}
	return printMembers(c, out, false)
}

// startSeed starts the first machine of a new cluster: a Consul server that
// bootstraps alone, carrying the description the control loop grows from.
func startSeed(ctx context.Context, dir, platformFile string, out io.Writer) (*rules.Platform, error) {
	var plat *rules.Platform
	var err error
	name := filepath.Join(dir, "platform.hcl")
	if platformFile == "" {
		if mirror := newestMirror(dir); mirror != "" {
			// The machines of this folder died (a reboot): the cluster is
			// re-created from the last description one of them held.
			fmt.Fprintf(out, "re-creating the cluster from the description mirrored in %s\n", mirror)
			platformFile = mirror
		}
	}
	if platformFile == "" {
		plat, err = rules.Parse(name, []byte(rules.DefaultSource), parseOpts())
	} else {
		plat, err = rules.ParseFile(platformFile, parseOpts())
		if strings.HasSuffix(platformFile, ".json") {
			name = filepath.Join(dir, "platform.json")
		}
	}
	if err != nil {
		return nil, err
	}
	if _, err := local.KillAll(ctx, dir); err != nil { // leftovers of a cluster that died
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(name, plat.Source, 0o644); err != nil {
		return nil, err
	}
	seedType := ""
	for _, n := range plat.MachineNames() {
		if plat.Machines[n].ConsulServer {
			seedType = n
			break
		}
	}
	t := &target{dir: dir, explicit: true}
	env, err := t.backendEnv(plat)
	if err != nil {
		return nil, err
	}
	// The seed runs on its type's first backend.
	beName := plat.Machines[seedType].Backends[0]
	spec := plat.Backends[beName]
	be, err := builtin.Registry().New(reconcile.BackendConfig(spec), env)
	if err != nil {
		return nil, err
	}
	sd, ok := be.(backends.Seeder)
	if !ok {
		return nil, fmt.Errorf("backend %q (type %s) cannot start a seed; the first backend of machine type %q must be local or docker", beName, spec.Type, seedType)
	}
	if err := sd.CanSeed(); err != nil {
		return nil, fmt.Errorf("backend %q cannot start a seed: %w", beName, err)
	}
	cf, _ := json.Marshal(clusterFile{Cluster: plat.Cluster, Backend: beName, BackendType: spec.Type, Settings: spec.Settings})
	if err := fsutil.WriteFileAtomic(filepath.Join(dir, "cluster.json"), cf, 0o644); err != nil {
		return nil, err
	}
	node := nodeconfig.Config{
		MachineID: reconcile.NewMachineID(seedType), MachineType: seedType, Cluster: plat.Cluster,
		ConsulServer: true, Encrypt: daemon.NewGossipKey(), PlatformFile: name,
	}.WithDefaults()
	if spec.Type != "local" {
		// A container cannot read our files: the description goes inline.
		node.PlatformFile, node.Platform = "", string(plat.Source)
	}
	if plat.Mesh.Enabled() {
		node.Mesh = &nodeconfig.Mesh{ListenPort: plat.Mesh.Port, Secret: mesh.NewSecret(), Peers: plat.Mesh.Peers}
	}
	node.Bootstrap = true
	inst, err := sd.Spawn(ctx, backends.Spec{Node: node})
	if err != nil {
		return nil, fmt.Errorf("start seed: %w", err)
	}
	fmt.Fprintf(out, "started seed %s on %s (cluster %q in %s)\n", inst.MachineID, inst.Address, plat.Cluster, dir)
	return plat, nil
}

// newestMirror returns the most recently written platform mirror of the
// machines in a cluster folder, or "".
// `down` keeps a copy of it as last-platform in the folder.
func newestMirror(dir string) string {
	ms, _ := local.Machines(dir)
	paths := []string{filepath.Join(dir, "last-platform")}
	for _, m := range ms {
		paths = append(paths, filepath.Join(m.Config.DataDir, "mirror", "platform"))
	}
	best, bestTime := "", time.Time{}
	for _, p := range paths {
		if fi, err := os.Stat(p); err == nil && fi.ModTime().After(bestTime) {
			best, bestTime = p, fi.ModTime()
		}
	}
	return best
}

// waitConverged waits until every machine type has its min of joined, alive
// members, printing progress as it changes.
func waitConverged(ctx context.Context, t *target, plat *rules.Platform, out io.Writer) (*api.Client, error) {
	last := ""
	start := time.Now()
	for {
		c, err := t.client()
		line := "waiting for the seed's Consul"
		if plat == nil {
			line = "waiting for a Consul leader"
			if err != nil && time.Since(start) > 30*time.Second {
				return nil, fmt.Errorf("machines run in %s but none has had a Consul leader for 30s: the cluster lost quorum (%v); `raptiformica down --dir %s` and then `up` re-create it with the description its machines mirrored", t.folder(), err, t.folder())
			}
		}
		done := false
		if err == nil {
			if plat == nil {
				plat, _ = kvPlatform(c)
			}
			if plat != nil {
				line, done = progress(c, plat)
			}
		}
		if line != last {
			fmt.Fprintf(out, "[%5.1fs] %s\n", time.Since(start).Seconds(), line)
			last = line
		}
		if done {
			return c, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("gave up waiting (%s): %v", last, ctx.Err())
		case <-time.After(300 * time.Millisecond):
		}
	}
}

func progress(c *api.Client, plat *rules.Platform) (string, bool) {
	inv := &reconcile.Inventory{Store: kvschema.New(c)}
	recs, _, err := inv.List(context.Background(), nil)
	if err != nil {
		return "waiting for the inventory: " + err.Error(), false
	}
	members, err := c.Agent().Members(false)
	if err != nil {
		return "waiting for members: " + err.Error(), false
	}
	alive := map[string]bool{}
	for _, m := range members {
		alive[m.Name] = reconcile.SerfStatus(m.Status) == reconcile.MemberAlive
	}
	var parts []string
	done := true
	for _, name := range plat.MachineNames() {
		mt := plat.Machines[name]
		live, pending := 0, 0
		for _, r := range recs {
			if r.Type != name {
				continue
			}
			switch {
			case r.State == reconcile.StateJoined && alive[r.ID]:
				live++
			case r.State == reconcile.StateSpawning || r.State == reconcile.StateJoining:
				pending++
			}
		}
		if live < mt.Min {
			done = false
		}
		parts = append(parts, fmt.Sprintf("%s %d/%d alive, %d joining", name, live, mt.Min, pending))
	}
	return strings.Join(parts, "; "), done
}

func kvPlatform(c *api.Client) (*rules.Platform, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pair, _, err := kvschema.New(c).Platform(ctx, nil)
	if err != nil {
		return nil, err
	}
	if pair == nil {
		return nil, errors.New("no platform description in KV yet")
	}
	return rules.Parse(daemon.KVSourceName, pair.Value, parseOpts())
}

func downCmd() *cobra.Command {
	c := newCommand("down", "stop every local machine of DIR (the description stays for the next up)", nArgs(0, 0),
		"raptiformica down", "raptiformica down --dir /tmp/dc2")
	t := addTarget(c)
	c.RunE = func(c *cobra.Command, _ []string) error { return down(c.Context(), t, c.OutOrStdout()) }
	return c
}

func down(ctx context.Context, t *target, out io.Writer) error {
	// The machines' folders go, but their last description stays, so that
	// the next `up` brings the platform back as it was.
	if m := newestMirror(t.folder()); m != "" && filepath.Dir(m) != t.folder() {
		if src, err := os.ReadFile(m); err == nil {
			_ = fsutil.WriteFileAtomic(filepath.Join(t.folder(), "last-platform"), src, 0o644)
		}
	}
	n, err := local.KillAll(ctx, t.folder())
	if err != nil {
		return err
	}
	if be, ok := t.dockerBackend(); ok {
		m, err := be.RemoveAll(ctx)
		if err != nil {
			return err
		}
		n += m
	}
	m, err := t.removeElsewhere(ctx)
	n += m
	fmt.Fprintf(out, "stopped %d machines in %s\n", n, t.folder())
	return err
}

// removeElsewhere removes the machines the cluster's last description put
// on backends other than local processes, such as an exec backend's
// containers or VMs. The local machines must be gone already, or their
// leader would replace what this removes.
func (t *target) removeElsewhere(ctx context.Context) (int, error) {
	src := newestMirror(t.folder())
	if src == "" {
		return 0, nil
	}
	p, err := rules.ParseFile(src, parseOpts())
	if err != nil {
		return 0, nil // nothing but local machines can be known from it
	}
	bes, err := t.backends(p)
	if err != nil {
		return 0, err
	}
	removed := 0
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(bes)) {
		if p.Backends[name].Type == "local" {
			continue
		}
		if ra, ok := bes[name].(backends.ClusterRemover); ok {
			m, err := ra.RemoveAll(ctx)
			removed += m
			errs = append(errs, err)
			continue
		}
		insts, err := bes[name].List(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("backend %s: %w", name, err))
			continue
		}
		for _, in := range insts {
			if err := bes[name].Destroy(ctx, in.MachineID); err != nil {
				errs = append(errs, fmt.Errorf("backend %s: %w", name, err))
				continue
			}
			removed++
		}
	}
	return removed, errors.Join(errs...)
}

// memberRow is one line of `members`.
type memberRow struct {
	Name    string `json:"name"`
	Address string `json:"address"`
	Status  string `json:"status"`
	Type    string `json:"machine_type"`
	State   string `json:"state"`
	Role    string `json:"role"`
	Leader  bool   `json:"leader"`
	// MeshEndpoints are where the member accepts overlay links; MeshPeers
	// the members it has a link to. Both empty without the mesh.
	MeshEndpoints []string `json:"mesh_endpoints,omitempty"`
	MeshPeers     []string `json:"mesh_peers,omitempty"`
}

func membersCmd() *cobra.Command {
	c := newCommand("members", "list the cluster's members with type, state, role and the leader", nArgs(0, 0),
		"raptiformica members", "raptiformica members --json | jq -r '.[] | select(.status != \"alive\") | .name'")
	t := addTarget(c)
	asJSON := jsonFlag(c)
	c.RunE = func(c *cobra.Command, _ []string) error {
		cl, err := t.client()
		if err != nil {
			return err
		}
		return printMembers(cl, c.OutOrStdout(), *asJSON)
	}
	return c
}

func printMembers(c *api.Client, out io.Writer, asJSON bool) error {
	members, err := c.Agent().Members(false)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	store := kvschema.New(c)
	recs, _, err := (&reconcile.Inventory{Store: store}).List(ctx, nil)
	if err != nil {
		return err
	}
	leader := store.Leader(ctx)
	meshNodes, err := daemon.MeshNodes(ctx, store)
	if err != nil {
		return err
	}
	nameOf := map[string]string{}
	for _, m := range members {
		nameOf[m.Addr] = m.Name
	}
	rows := []memberRow{}
	for _, m := range members {
		role := "client"
		if m.Tags[api.MemberTagKeyRole] == api.MemberTagValueRoleServer {
			role = "server"
		}
		r := recs[m.Name]
		row := memberRow{Name: m.Name, Address: m.Addr, Status: string(reconcile.SerfStatus(m.Status)), Type: r.Type, State: string(r.State), Role: role, Leader: m.Name == leader}
		if mn, ok := meshNodes[m.Name]; ok {
			row.MeshEndpoints = mn.Endpoints
			for _, l := range mn.Links {
				row.MeshPeers = append(row.MeshPeers, cmp.Or(nameOf[l], l))
			}
			sort.Strings(row.MeshPeers)
		}
		rows = append(rows, row)
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].Name < rows[j].Name })
	if asJSON {
		return writeJSON(out, rows)
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	withMesh := len(meshNodes) > 0
	head := "NODE\tADDRESS\tSTATUS\tTYPE\tSTATE\tROLE\tLEADER"
	if withMesh {
		head += "\tMESH ENDPOINTS\tMESH PEERS"
	}
	fmt.Fprintln(w, head)
	for _, r := range rows {
		mark := ""
		if r.Leader {
			mark = "*"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s", r.Name, r.Address, r.Status, dash(r.Type), dash(r.State), r.Role, mark)
		if withMesh {
			fmt.Fprintf(w, "\t%s\t%s", dash(strings.Join(r.MeshEndpoints, ",")), dash(strings.Join(r.MeshPeers, ",")))
		}
		fmt.Fprintln(w)
	}
	return w.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func writeJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
