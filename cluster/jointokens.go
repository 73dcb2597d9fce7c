package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/daemon/agentapi"
	"github.com/raptiformica/raptiformica/internal/jointoken"
	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/pki"
	"github.com/raptiformica/raptiformica/rules"
)

// CreateJoinToken makes a join token for machines of type typ (any type the
// joining machine names when empty), valid for ttl, and records it in the
// cluster c talks to; caCert is the cluster's CA, whose hash the token
// carries. The type must be one of the description p.
func CreateJoinToken(ctx context.Context, c *api.Client, p *rules.Platform, caCert, typ string, ttl time.Duration) (jointoken.Token, error) {
	if typ != "" {
		if _, ok := p.Machines[typ]; !ok {
			return jointoken.Token{}, fmt.Errorf("--type %s: the description has no such machine type (it has %v)", typ, p.MachineNames())
		}
	}
	if ttl <= 0 {
		return jointoken.Token{}, fmt.Errorf("--ttl %s: must be positive", ttl)
	}
	hash, err := pki.Fingerprint(caCert)
	if err != nil {
		return jointoken.Token{}, fmt.Errorf("the cluster's CA certificate: %w", err)
	}
	tok, err := jointoken.New(hash)
	if err != nil {
		return tok, err
	}
	b, _ := json.Marshal(jointoken.NewRecord(tok, typ, time.Now(), ttl))
	ok, err := kvschema.New(c).JoinTokens().CAS(ctx, tok.ID, b, 0)
	if err == nil && !ok {
		err = errors.New("a token with its ID exists already: try again")
	}
	return tok, err
}

// joinTokens lists the cluster's join tokens, oldest first, expired ones
// included (revoke removes them).
func joinTokens(ctx context.Context, c *api.Client) ([]jointoken.Record, error) {
	vals, err := kvschema.New(c).JoinTokens().List(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]jointoken.Record, 0, len(vals))
	for id, v := range vals {
		var r jointoken.Record
		if err := json.Unmarshal(v, &r); err != nil {
			return nil, fmt.Errorf("%s%s: %w", kvschema.JoinTokens, id, err)
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, nil
}

// revokeJoinToken removes a join token: no machine joins with it after.
func revokeJoinToken(ctx context.Context, c *api.Client, id string) error {
	f := kvschema.New(c).JoinTokens()
	v, _, err := f.Get(ctx, id)
	if err != nil {
		return err
	}
	if v == nil {
		return fmt.Errorf("no join token %s (`raptiformica token list`)", id)
	}
	return f.Delete(ctx, id)
}

// JoinSpec is how `join --token` configures the machine it runs on.
type JoinSpec struct {
	// Agent is a member's agent (HOST[:PORT], its TLS port).
	Agent string
	Token string
	// Type is the machine type, when the token names none.
	Type string
	// Config is where the node config is written; DataDir and BindAddr
	// are this machine's (BindAddr "auto" picks its address).
	Config, DataDir, BindAddr string
	// Force replaces a node config that exists.
	Force bool
}

// Join exchanges a join token for this machine's node config at a member
// and writes it (mode 0600). The member's CA is checked by the token's hash
// before anything is sent; a config in place is kept unless Force.
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
