package cluster

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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

// JoinTokenSpec is what `token create` asks of a join token.
type JoinTokenSpec struct {
	// Type is the machine type its machines become; empty picks the
	// description's first client type (JoinTokenType).
	Type string
	// Uses is how many machines it joins; zero is jointoken.DefaultUses.
	Uses int
	TTL  time.Duration
}

// JoinTokenType is the machine type a join token asked for typ makes in
// the description p, and whether that is a Consul server: typ itself when
// the description has it; when empty, the first type by name that is not
// a server. A server is never picked for the caller: a server's node
// config holds the cluster's token and the CA key, so a token for one is
// made only when asked by name.
func JoinTokenType(p *rules.Platform, typ string) (string, bool, error) {
	if typ != "" {
		mt, ok := p.Machines[typ]
		if !ok {
			return "", false, fmt.Errorf("--type %s: the description has no such machine type (it has %v)", typ, p.MachineNames())
		}
		return typ, mt.ConsulServer, nil
	}
	for _, n := range p.MachineNames() {
		if !p.Machines[n].ConsulServer {
			return n, false, nil
		}
	}
	return "", false, fmt.Errorf("the description has only server types (%v): name one with --type to make a server's token, which gives the cluster's token and the CA key", p.MachineNames())
}

// CreateJoinToken makes a join token as s asks and records it in the
// cluster c talks to; caCert is the cluster's CA, whose hash the token
// carries. It returns the token and its record, which names the type.
func CreateJoinToken(ctx context.Context, c *api.Client, p *rules.Platform, caCert string, s JoinTokenSpec) (jointoken.Token, jointoken.Record, error) {
	typ, _, err := JoinTokenType(p, s.Type)
	if err != nil {
		return jointoken.Token{}, jointoken.Record{}, err
	}
	if s.TTL <= 0 {
		return jointoken.Token{}, jointoken.Record{}, fmt.Errorf("--ttl %s: must be positive", s.TTL)
	}
	uses := cmp.Or(s.Uses, jointoken.DefaultUses)
	if uses < 0 {
		return jointoken.Token{}, jointoken.Record{}, fmt.Errorf("--uses %d: must be positive", s.Uses)
	}
	hash, err := pki.Fingerprint(caCert)
	if err != nil {
		return jointoken.Token{}, jointoken.Record{}, fmt.Errorf("the cluster's CA certificate: %w", err)
	}
	tok, err := jointoken.New(hash)
	if err != nil {
		return tok, jointoken.Record{}, err
	}
	rec := jointoken.NewRecord(tok, typ, uses, time.Now(), s.TTL)
	b, _ := json.Marshal(rec)
	ok, err := kvschema.New(c).JoinTokens().CAS(ctx, tok.ID, b, 0)
	if err == nil && !ok {
		err = errors.New("a token with its ID exists already: try again")
	}
	return tok, rec, err
}

// JoinTokenLine is one line of `token list`: a token, with the uses a join
// token has left.
type JoinTokenLine struct {
	Token
	// UsesLeft is how many more machines a join token joins; nil for a
	// role's token.
	UsesLeft *int `json:"uses_left,omitempty"`
}

// TokenList is Tokens, each join token with its uses left.
func TokenList(ctx context.Context, c *api.Client) ([]JoinTokenLine, error) {
	toks, err := Tokens(ctx, c)
	if err != nil {
		return nil, err
	}
	recs, err := joinTokens(ctx, c)
	if err != nil {
		return nil, err
	}
	left := make(map[string]int, len(recs))
	for _, r := range recs {
		left[r.ID] = r.UsesLeft
	}
	out := make([]JoinTokenLine, len(toks))
	for i, t := range toks {
		out[i].Token = t
		if n, ok := left[t.ID]; ok && t.Kind == "join" {
			out[i].UsesLeft = &n
		}
	}
	return out, nil
}

// WriteTokenList prints lines as `token list` shows them (WriteTokens),
// a join token's uses left after its type.
func WriteTokenList(out io.Writer, lines []JoinTokenLine, now time.Time) error {
	toks := make([]Token, len(lines))
	for i, l := range lines {
		toks[i] = l.Token
		switch {
		case l.UsesLeft == nil:
		case *l.UsesLeft <= 0:
			toks[i].For += ", used up"
		case *l.UsesLeft == 1:
			toks[i].For += ", 1 use left"
		default:
			toks[i].For += fmt.Sprintf(", %d uses left", *l.UsesLeft)
		}
	}
	return WriteTokens(out, toks, now)
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
	// Type, when set, is the machine type this machine expects to
	// become: a token of another type is refused, unspent.
	Type string
	// Config is where the node config is written; DataDir and BindAddr
	// are this machine's (BindAddr "auto" picks its address).
	Config, DataDir, BindAddr string
	// Force replaces a node config that exists.
	Force bool
}

// Join exchanges a join token for this machine's node config at a server
// and writes it (mode 0600). The member's CA is checked by the token's
// hash, and its certificate for a server's, before anything is sent; a
// config in place is kept unless Force.
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
