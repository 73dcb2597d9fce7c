package docker

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/raptiformica/raptiformica/backends"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
)

// TestSettingsAreChecked: a docker backend's settings are refused with the
// setting named, before any engine is asked.
func TestSettingsAreChecked(t *testing.T) {
	for _, tc := range []struct {
		settings map[string]string
		want     string
	}{
		{map[string]string{"sockett": "/run/docker.sock"}, `unknown setting "sockett"`},
		{map[string]string{"share_socket": "maybe"}, `settings share_socket: must be "false", "servers" ("true" says the same) or "all"`},
		{map[string]string{"share_socket": "clients"}, `settings share_socket: must be`},
		{map[string]string{"socket": "run/docker.sock"}, "setting socket: must be an absolute path"},
	} {
		_, err := New(backends.Config{Name: "engine", Settings: tc.settings}, backends.Env{Cluster: "c"})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("settings %v: got %v, want %q", tc.settings, err, tc.want)
		}
	}
}

// TestTrustDockerShareSocket: the engine's socket is root on the engine's
// machine, so by default no container gets it; "true" (or "servers") gives
// it to Consul servers only, never to a client, which holds only its own
// keys; only "all" gives it to clients too.
func TestTrustDockerShareSocket(t *testing.T) {
	server := nodeconfig.Config{MachineID: "server-1", MachineType: "server", ConsulServer: true}
	client := nodeconfig.Config{MachineID: "worker-1", MachineType: "worker"}
	for _, tc := range []struct {
		name                string
		setting             string
		toServer, toClients bool
	}{
		{name: "default", setting: ""},
		{name: "false", setting: "false"},
		{name: "true", setting: "true", toServer: true},
		{name: "servers", setting: "servers", toServer: true},
		{name: "all", setting: "all", toServer: true, toClients: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			settings := map[string]string{}
			if tc.setting != "" {
				settings["share_socket"] = tc.setting
			}
			be, err := New(backends.Config{Name: "engine", Settings: settings}, backends.Env{Cluster: "c"})
			if err != nil {
				t.Fatal(err)
			}
			b := be.(*Backend)
			if got := b.share.with(server); got != tc.toServer {
				t.Errorf("share_socket %q: a server gets the socket: got %v, want %v", tc.setting, got, tc.toServer)
			}
			if got := b.share.with(client); got != tc.toClients {
				t.Errorf("share_socket %q: a client gets the socket: got %v, want %v", tc.setting, got, tc.toClients)
			}
		})
	}
}

// TestTrustDockerClientContainerHasNoSocket: against the real engine, the
// container Spawn makes for a client has no engine socket, by default and
// with share_socket = "true"; a server's has it only when the description
// shares it, and a client's only with "all".
func TestTrustDockerClientContainerHasNoSocket(t *testing.T) {
	cli := needEngine(t)
	img := idlerImage(t, cli)
	for _, tc := range []struct {
		name, setting string
		server        bool
		want          bool
	}{
		{name: "client by default", setting: "", want: false},
		{name: "server by default", setting: "", server: true, want: false},
		{name: "client with true", setting: "true", want: false},
		{name: "server with true", setting: "true", server: true, want: true},
		{name: "client with all", setting: "all", want: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cluster := uniqueCluster()
			settings := map[string]string{"image": img}
			if tc.setting != "" {
				settings["share_socket"] = tc.setting
			}
			be, err := New(backends.Config{Name: "docker", Settings: settings}, backends.Env{Cluster: cluster})
			if err != nil {
				t.Fatal(err)
			}
			b := be.(*Backend)
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				if _, err := b.RemoveAll(ctx); err != nil {
					t.Errorf("remove the cluster's containers: %v", err)
				}
				_ = b.cli.Close()
			})
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			typ := "worker"
			if tc.server {
				typ = "server"
			}
			node := nodeconfig.Config{MachineID: cluster + "-" + typ, MachineType: typ, Cluster: cluster, ConsulServer: tc.server}
			in, err := b.Spawn(ctx, backends.Spec{Node: node})
			if err != nil {
				t.Fatal(err)
			}
			info, err := cli.ContainerInspect(ctx, in.MachineID)
			if err != nil {
				t.Fatal(err)
			}
			got := false
			for _, m := range info.Mounts {
				if m.Destination == socketPath {
					got = true
				}
			}
			if got != tc.want {
				t.Errorf("share_socket %q, %s container: has the engine's socket at %s: got %v, want %v (mounts %+v)",
					tc.setting, typ, socketPath, got, tc.want, info.Mounts)
			}
		})
	}
}
