package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/raptiformica/raptiformica/daemon/agentapi"
	"github.com/raptiformica/raptiformica/internal/jointoken"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
)

// JoinSpec is how `join --token` configures the machine it runs on.
type JoinSpec struct {
	// Agent is a member's agent (HOST[:PORT], its TLS port).
	Agent string
	Token string
	// Type, when set, is the machine type this machine expects to
	// become: a token of another type is refused, unspent.
	Type string
	// Config is where the node config is written; DataDir and BindAddr
	// are this machine's (BindAddr "auto" picks its address).
	Config, DataDir, BindAddr string
	// Force replaces a node config that exists.
	Force bool
}

// Join is the joining machine's side of the exchange: it exchanges a join
// token for this machine's node config at a server (agentapi.Join) and
// writes it (mode 0600). The member's CA is checked by the token's hash,
// and its certificate for a server's, before anything is sent; a config in
// place is kept unless Force. It blocks until the server answers or ctx
// ends.
func Join(ctx context.Context, s JoinSpec) (nodeconfig.Config, error) {
	tok, err := jointoken.Parse(s.Token)
	if err != nil {
		return nodeconfig.Config{}, err
	}
	if _, err := os.Stat(s.Config); err == nil && !s.Force {
		return nodeconfig.Config{}, fmt.Errorf("%s exists: this machine has a node config (--force replaces it)", s.Config)
	}
	cfg, err := agentapi.Join(ctx, s.Agent, tok, s.Type)
	if err != nil {
		return cfg, err
	}
	cfg.DataDir, cfg.BindAddr, cfg.ClusterDir = s.DataDir, s.BindAddr, ""
	if cfg.ConsulBinary, err = nodeconfig.FindConsul(); err != nil {
		cfg.ConsulBinary = nodeconfig.PackagedConsul
	}
	if err := cfg.Validate(); err != nil {
		return cfg, fmt.Errorf("the member's node config: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(s.Config), 0o755); err != nil {
		return cfg, err
	}
	return cfg, nodeconfig.Write(s.Config, cfg)
}
