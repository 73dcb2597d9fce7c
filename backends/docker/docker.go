// Package docker is the compute backend over the Docker Engine API: a machine
// is a container on a user-defined bridge network of the cluster, labelled
// with its machine ID, machine type and cluster, running the raptiformica
// agent (which runs its Consul). The node image is built locally FROM
// scratch with the two static binaries, on first use; nothing is pulled.
//
// The engine's socket is root on the engine's machine and reaches every
// container on it, so a container gets it only when the description's
// share_socket says so, and then only a Consul server's (whichever leads
// spawns and removes its siblings) unless it says "all".
package docker

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/internal/arch"
	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
)

// Labels carried by every container and network of ours.
const (
	LabelCluster     = "raptiformica.cluster"
	LabelMachineID   = "raptiformica.machine_id"
	LabelMachineType = "raptiformica.machine_type"
	// LabelMadeBy names the member that made the container (its node
	// config's made_by): members sharing an engine each list only the
	// containers they made.
	LabelMadeBy = "raptiformica.made_by"
)

// machineLabels are the labels of the container of node in cluster.
func machineLabels(cluster string, node nodeconfig.Config) map[string]string {
	l := map[string]string{LabelCluster: cluster, LabelMachineID: node.MachineID, LabelMachineType: node.MachineType}
	if node.MadeBy != "" {
		l[LabelMadeBy] = node.MadeBy
	}
	return l
}

// Paths inside the node image.
const (
	imageBinary = "/usr/local/bin/raptiformica"
	imageConsul = "/usr/local/bin/consul"
	configPath  = "/etc/raptiformica/agent.json"
	dataDir     = "/var/lib/raptiformica"
	socketPath  = "/var/run/docker.sock"
)

var (
	_ backends.Seeder         = (*Backend)(nil)
	_ backends.ClusterRemover = (*Backend)(nil)
	_ backends.Watcher        = (*Backend)(nil)
)

// Backend spawns machines as containers.
type Backend struct {
	name    string
	cluster string
	network string   // the primary network: machines' addresses are on it
	extra   []string // further networks every container is attached to
	subnet  string
	image   string // set: use as is; empty: build our own on first use
	binary  string
	consul  string
	cli     *client.Client
	// share says which machines get the engine's socket, so that they can
	// run this backend too (lead, or take its spawns).
	share socketShare

	mu    sync.Mutex // guards built
	built string     // the image tag built or found, once

	// clock times Watch's resubscriptions; nil is the wall clock.
	clock clock.Clock
	// betweenSubscriptions, when set (by tests), runs in Watch after one
	// subscription to the engine's events ends and before the next opens.
	betweenSubscriptions func()
}

// Check reports what is wrong in a docker backend's configuration: commands
// (it takes settings only), an unknown setting, a share_socket it cannot
// read. The description's parser calls it (through the registry), so that
// a description that would give the engine's socket to the wrong machines
// is refused at its line, before any machine is made; New refuses the same.
func Check(cfg backends.Config) []backends.Problem {
	var probs []backends.Problem
	if len(cfg.Commands) > 0 {
		probs = append(probs, backends.Problem{Field: "commands", Message: "commands are for exec backends; a docker backend takes settings only"})
	}
	for _, k := range slices.Sorted(maps.Keys(cfg.Settings)) {
		switch k {
		case "network", "image", "subnet", "socket", "share_socket":
		default:
			probs = append(probs, backends.Problem{Field: "settings " + k, Message: fmt.Sprintf("unknown setting %q (known: network, image, subnet, socket, share_socket)", k)})
		}
	}
	if _, err := parseShare(cfg.Settings["share_socket"]); err != nil {
		probs = append(probs, backends.Problem{Field: "settings share_socket", Message: err.Error()})
	}
	return probs
}

// New builds a docker backend. Settings: "network" (default
// "raptiformica-<cluster>", created when missing; a comma-separated list
// attaches every container to each network, the first being the one its
// address is on: a machine between two networks), "subnet" (the first
// network's IPv4 subnet in CIDR form when this backend creates it; by
// default the engine picks one, but only a configured subnet lets a
// container keep its address when it is reconnected), "image" (default:
// the node image built from this node's binaries), "socket" (the engine's
// unix socket on the machine that runs the backend; default: DOCKER_HOST,
// or the engine's usual socket) and "share_socket" (which machines get the
// engine's socket, so that they can run this backend themselves: "false",
// the default, none; "servers", or "true", the Consul servers'; "all",
// every machine's, clients' too).
func New(cfg backends.Config, env backends.Env) (backends.Backend, error) {
	if probs := Check(cfg); len(probs) > 0 {
		return nil, fmt.Errorf("%s: %s", probs[0].Field, probs[0].Message)
	}
	share, _ := parseShare(cfg.Settings["share_socket"])
	opts := []client.Opt{client.FromEnv, client.WithAPIVersionNegotiation()}
	if s := cfg.Settings["socket"]; s != "" {
		if !filepath.IsAbs(s) {
			return nil, fmt.Errorf("setting socket: must be an absolute path, got %q", s)
		}
		opts = append(opts, client.WithHost("unix://"+s))
	}
	var nets []string
	for _, n := range strings.Split(cfg.Settings["network"], ",") {
		if n = strings.TrimSpace(n); n != "" {
			nets = append(nets, n)
		}
	}
	subnet := cfg.Settings["subnet"]
	if subnet != "" {
		if _, err := netip.ParsePrefix(subnet); err != nil {
			return nil, fmt.Errorf("setting subnet: %w", err)
		}
	}
	cli, err := client.NewClientWithOpts(opts...)
	if err != nil {
		return nil, fmt.Errorf("docker client: %w", err)
	}
	if len(nets) == 0 {
		nets = []string{"raptiformica-" + env.Cluster}
	}
	return &Backend{name: cfg.Name, cluster: env.Cluster, network: nets[0], extra: nets[1:], subnet: subnet, image: cfg.Settings["image"], binary: env.Binary, consul: env.ConsulBinary, cli: cli, share: share}, nil
}

// MachineArch is this host's architecture: its machines are containers
// that run on it (backends.Archer).
func (b *Backend) MachineArch() string { return arch.Native() }

// Available pings the engine.
func (b *Backend) Available(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := b.cli.Ping(ctx); err != nil {
		return fmt.Errorf("docker engine unreachable: %w", err)
	}
	return nil
}

// Scope names the engine, by the ID it gives itself: members that reach
// one engine (its socket shared with the containers) list the same
// containers.
func (b *Backend) Scope(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	info, err := b.cli.Info(ctx)
	if err != nil {
		return "", err
	}
	if info.ID == "" {
		return "", nil
	}
	// Machines cloned from one image share an engine ID: the engine's
	// host name tells them apart.
	return "docker:" + info.ID + "/" + info.Name, nil
}

// Network returns the name of the cluster's network.
func (b *Backend) Network() string { return b.network }

// Spawn creates and starts a container for spec.Node. A container that
// fails to start is removed again.
func (b *Backend) Spawn(ctx context.Context, spec backends.Spec) (backends.Instance, error) {
	img, err := b.ensureImage(ctx)
	if err != nil {
		return backends.Instance{}, err
	}
	if err := b.ensureNetwork(ctx); err != nil {
		return backends.Instance{}, err
	}
	node := spec.Node
	node.Backend = b.name
	node.BindAddr = nodeconfig.BindAuto
	node.DataDir = dataDir
	node.ConsulBinary = imageConsul
	node.ClusterDir = ""
	// On a bridge, failures are found in about a second; over the mesh,
	// the first packets to a member wait for its route, so Consul's own
	// timing stays.
	node.FastGossip = node.Mesh == nil
	host := &container.HostConfig{NetworkMode: container.NetworkMode(b.network)}
	// Decided here, where every container is made, on the node config the
	// machine will run with: no path to a container skips it.
	if b.share.with(node) {
		// The engine resolves the path on its own machine, where its
		// socket is at the usual place, whatever path this machine
		// reaches it by.
		host.Binds = []string{socketPath + ":" + socketPath}
	}
	if node.Mesh != nil {
		// The overlay's TUN interface: the one capability it needs (no
		// --privileged), the device, and IPv6, which the engine turns off
		// in containers of IPv4-only networks.
		m := *node.Mesh
		m.ServeUnderlay = true
		node.Mesh = &m
		host.CapAdd = []string{"NET_ADMIN"}
		host.Resources.Devices = []container.DeviceMapping{{PathOnHost: "/dev/net/tun", PathInContainer: "/dev/net/tun", CgroupPermissions: "rwm"}}
		host.Sysctls = map[string]string{"net.ipv6.conf.all.disable_ipv6": "0"}
	}
	cfg, err := json.MarshalIndent(node.WithDefaults(), "", "  ")
	if err != nil {
		return backends.Instance{}, err
	}
	created, err := b.cli.ContainerCreate(ctx,
		&container.Config{
			Image:    img,
			Hostname: node.MachineID,
			Labels:   machineLabels(b.cluster, node),
			Cmd:      []string{"agent", "-config", configPath},
		},
		host,
		&network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{b.network: {}}},
		nil, node.MachineID)
	if err != nil {
		return backends.Instance{}, fmt.Errorf("create container: %w", err)
	}
	fail := func(err error) (backends.Instance, error) {
		rmCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		_ = b.cli.ContainerRemove(rmCtx, created.ID, container.RemoveOptions{Force: true, RemoveVolumes: true})
		return backends.Instance{}, err
	}
	// The engine attaches one network at create; the others before start,
	// so that the agent finds all its addresses when it starts.
	for _, n := range b.extra {
		if err := b.cli.NetworkConnect(ctx, n, created.ID, nil); err != nil {
			return fail(fmt.Errorf("attach network %s: %w", n, err))
		}
	}
	tarball, err := tarFiles(map[string]tarEntry{configPath: {data: cfg, mode: 0o600}})
	if err != nil {
		return fail(err)
	}
	if err := b.cli.CopyToContainer(ctx, created.ID, "/", tarball, container.CopyToContainerOptions{}); err != nil {
		return fail(fmt.Errorf("copy node config: %w", err))
	}
	if err := b.cli.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		return fail(fmt.Errorf("start container: %w", err))
	}
	in, err := b.inspect(ctx, created.ID)
	if err != nil {
		return fail(err)
	}
	return in, nil
}

// CanSeed says the backend can start the first machine of a new cluster:
// it keeps no state in the cluster's KV.
func (b *Backend) CanSeed() error { return nil }

func (b *Backend) inspect(ctx context.Context, id string) (backends.Instance, error) {
	info, err := b.cli.ContainerInspect(ctx, id)
	if err != nil {
		return backends.Instance{}, fmt.Errorf("inspect container: %w", err)
	}
	in := backends.Instance{
		MachineID:   info.Config.Labels[LabelMachineID],
		MachineType: info.Config.Labels[LabelMachineType],
		MadeBy:      info.Config.Labels[LabelMadeBy],
		Running:     info.State != nil && info.State.Running,
	}
	if t, err := time.Parse(time.RFC3339Nano, info.Created); err == nil {
		in.Created = t
	}
	if info.NetworkSettings != nil {
		if ep := info.NetworkSettings.Networks[b.network]; ep != nil {
			in.Address = ep.IPAddress
		}
		if len(b.extra) > 0 {
			for _, n := range append([]string{b.network}, b.extra...) {
				if ep := info.NetworkSettings.Networks[n]; ep != nil && ep.IPAddress != "" {
					in.Addresses = append(in.Addresses, ep.IPAddress)
				}
			}
		}
	}
	return in, nil
}

// Destroy removes the machine's container, running or not.
func (b *Backend) Destroy(ctx context.Context, machineID string) error {
	list, err := b.containers(ctx, machineID)
	if err != nil {
		return err
	}
	for _, c := range list {
		if err := b.remove(ctx, c.ID); err != nil {
			return fmt.Errorf("machine %s: %w", machineID, err)
		}
	}
	return nil
}

// remove force-removes a container. A container already gone, or already
// being removed (by another node, or a previous call), is no error.
func (b *Backend) remove(ctx context.Context, id string) error {
	err := b.cli.ContainerRemove(ctx, id, container.RemoveOptions{Force: true, RemoveVolumes: true})
	if err == nil || cerrdefs.IsNotFound(err) || cerrdefs.IsConflict(err) {
		return nil
	}
	return fmt.Errorf("remove container: %w", err)
}

// List returns every container of the cluster, running or not.
func (b *Backend) List(ctx context.Context) ([]backends.Instance, error) {
	list, err := b.containers(ctx, "")
	if err != nil {
		return nil, err
	}
	out := make([]backends.Instance, 0, len(list))
	for _, c := range list {
		in := backends.Instance{
			MachineID:   c.Labels[LabelMachineID],
			MachineType: c.Labels[LabelMachineType],
			MadeBy:      c.Labels[LabelMadeBy],
			Running:     c.State == "running",
			Created:     time.Unix(c.Created, 0),
		}
		if c.NetworkSettings != nil {
			if ep := c.NetworkSettings.Networks[b.network]; ep != nil {
				in.Address = ep.IPAddress
			}
		}
		out = append(out, in)
	}
	return out, nil
}

func (b *Backend) containers(ctx context.Context, machineID string) ([]container.Summary, error) {
	f := filters.NewArgs(filters.Arg("label", LabelCluster+"="+b.cluster))
	if machineID != "" {
		f.Add("label", LabelMachineID+"="+machineID)
	}
	list, err := b.cli.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	return list, nil
}

// RemoveAll removes every container of the cluster and the networks made
// for it; `down` calls it. It returns how many containers it removed.
func (b *Backend) RemoveAll(ctx context.Context) (int, error) {
	removed := 0
	// A leader still running while its siblings go spawns replacements:
	// list again until nothing is left.
	for round := 0; ; round++ {
		list, err := b.containers(ctx, "")
		if err != nil {
			return removed, err
		}
		if len(list) == 0 {
			break
		}
		if round == 20 {
			return removed, fmt.Errorf("containers of cluster %s keep appearing", b.cluster)
		}
		if round > 0 {
			// Removals in progress.
			if err := clock.Sleep(ctx, clock.Real{}, 250*time.Millisecond); err != nil {
				return removed, err
			}
		}
		for _, c := range list {
			if err := b.remove(ctx, c.ID); err != nil {
				return removed, err
			}
			removed++
		}
	}
	// Only networks made for the cluster go (by any of its backends: each
	// labels what it creates); one named in the settings (Docker's own
	// "bridge", a user's) is not ours to remove.
	nets, err := b.cli.NetworkList(ctx, network.ListOptions{Filters: filters.NewArgs(filters.Arg("label", LabelCluster+"="+b.cluster))})
	if err != nil {
		return removed, fmt.Errorf("list networks: %w", err)
	}
	for _, nw := range nets {
		if err := b.cli.NetworkRemove(ctx, nw.ID); err != nil && !cerrdefs.IsNotFound(err) {
			return removed, fmt.Errorf("remove network %s: %w", nw.Name, err)
		}
	}
	return removed, nil
}

// Client returns the engine client, for tests and the CLI.
func (b *Backend) Client() *client.Client { return b.cli }

// networkMu serialises network creation in this process: the engine
// checks a new network's name against existing ones, but not against one
// being created at the same moment, so two spawns racing (of one backend,
// or of two backends sharing a network) would make two networks of one
// name, which every later use then finds ambiguous.
var networkMu sync.Mutex

func (b *Backend) ensureNetwork(ctx context.Context) error {
	networkMu.Lock()
	defer networkMu.Unlock()
	for i, name := range append([]string{b.network}, b.extra...) {
		if _, err := b.cli.NetworkInspect(ctx, name, network.InspectOptions{}); err == nil {
			continue
		} else if !cerrdefs.IsNotFound(err) {
			return fmt.Errorf("inspect network %s: %w", name, err)
		}
		opts := network.CreateOptions{Driver: "bridge", Labels: map[string]string{LabelCluster: b.cluster}}
		if b.subnet != "" && i == 0 {
			opts.IPAM = &network.IPAM{Config: []network.IPAMConfig{{Subnet: b.subnet}}}
		}
		_, err := b.cli.NetworkCreate(ctx, name, opts)
		if err != nil && !cerrdefs.IsConflict(err) {
			return fmt.Errorf("create network %s: %w", name, err)
		}
	}
	return nil
}

// ensureImage returns the image to run: the configured one, which must
// exist, or the node image built from this node's binaries, tagged by their
// content so that new binaries make a new image.
func (b *Backend) ensureImage(ctx context.Context) (string, error) {
	if b.image != "" {
		if _, err := b.cli.ImageInspect(ctx, b.image); err != nil {
			return "", fmt.Errorf("image %q: %w", b.image, err)
		}
		return b.image, nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.built != "" {
		return b.built, nil
	}
	tag, err := BuildImage(ctx, b.cli, b.binary, b.consul)
	if err != nil {
		return "", err
	}
	b.built = tag
	return tag, nil
}

// BuildImage builds the node image FROM scratch with the raptiformica and
// Consul binaries at the given paths, unless an image with the same content
// exists, and returns its tag. Both binaries must be static.
func BuildImage(ctx context.Context, cli *client.Client, binary, consul string) (string, error) {
	bin, err := os.ReadFile(binary)
	if err != nil {
		return "", fmt.Errorf("node image: %w", err)
	}
	con, err := os.ReadFile(consul)
	if err != nil {
		return "", fmt.Errorf("node image: %w", err)
	}
	h := sha256.New()
	h.Write(bin)
	h.Write(con)
	tag := "raptiformica-node:" + hex.EncodeToString(h.Sum(nil))[:12]
	if _, err := cli.ImageInspect(ctx, tag); err == nil {
		return tag, nil
	}
	dockerfile := "FROM scratch\nCOPY raptiformica consul /usr/local/bin/\nENTRYPOINT [\"" + imageBinary + "\"]\n"
	tarball, err := tarFiles(map[string]tarEntry{
		"Dockerfile":   {data: []byte(dockerfile), mode: 0o644},
		"raptiformica": {data: bin, mode: 0o755},
		"consul":       {data: con, mode: 0o755},
	})
	if err != nil {
		return "", err
	}
	resp, err := cli.ImageBuild(ctx, tarball, build.ImageBuildOptions{Tags: []string{tag}, Remove: true, ForceRemove: true,
		Labels: map[string]string{"raptiformica.node-image": "1"}})
	if err != nil {
		return "", fmt.Errorf("build node image: %w", err)
	}
	defer resp.Body.Close()
	// The build reports errors inside its JSON stream, not as a status.
	dec := json.NewDecoder(resp.Body)
	for {
		var msg struct {
			Error string `json:"error"`
		}
		if err := dec.Decode(&msg); err == io.EOF {
			break
		} else if err != nil {
			return "", fmt.Errorf("build node image: %w", err)
		}
		if msg.Error != "" {
			return "", fmt.Errorf("build node image: %s", strings.TrimSpace(msg.Error))
		}
	}
	if _, err := cli.ImageInspect(ctx, tag); err != nil {
		return "", fmt.Errorf("build node image: %s missing after the build: %w", tag, err)
	}
	return tag, nil
}

type tarEntry struct {
	data []byte
	mode int64
}

// tarFiles makes a tar stream of files; parent folders are added so that
// the engine creates them.
func tarFiles(files map[string]tarEntry) (io.Reader, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	for name, f := range files {
		rel := strings.TrimPrefix(name, "/")
		parts := strings.Split(rel, "/")
		for i := 1; i < len(parts); i++ {
			d := strings.Join(parts[:i], "/") + "/"
			if !dirs[d] {
				dirs[d] = true
				if err := tw.WriteHeader(&tar.Header{Name: d, Mode: 0o755, Typeflag: tar.TypeDir, ModTime: time.Unix(0, 0)}); err != nil {
					return nil, err
				}
			}
		}
		if err := tw.WriteHeader(&tar.Header{Name: rel, Mode: f.mode, Size: int64(len(f.data)), ModTime: time.Unix(0, 0)}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return &buf, nil
}
