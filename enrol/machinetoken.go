package enrol

import (
	"context"
	"fmt"
	"strings"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/internal/kvschema"
)

// Names of the ACL policies of client machines: one all share, and one of
// each machine's own.
const (
	clientPolicy        = "raptiformica-client"
	machinePolicyPrefix = "raptiformica-machine-"
	machineDescription  = "raptiformica machine "
)

// MachinePolicy is the name of client machine id's own ACL policy, the one
// MachineToken links its token to: the policy goes, and its tokens with
// it, when the machine does (RemoveMachineToken).
func MachinePolicy(id string) string { return machinePolicyPrefix + id }

// MachineToken makes the ACL token of a new client machine, or returns
// the one it has: its node identity, the policy every client shares and
// one of its own (its mesh entry, its offer, its provisioning record, its
// work orders). A client never leads, so it never needs more; a server
// gets the cluster's token, with which it bootstraps ACLs and leads. c must
// hold a token that may write ACLs (the leader's, an operator's). It
// blocks on a few requests to Consul.
func MachineToken(ctx context.Context, c *api.Client, id string) (string, error) {
	w := (&api.WriteOptions{}).WithContext(ctx)
	shared, err := EnsurePolicy(ctx, c, clientPolicy, "what every raptiformica client machine may do", kvschema.ClientRules)
	if err != nil {
		return "", err
	}
	own, err := EnsurePolicy(ctx, c, MachinePolicy(id), "raptiformica machine "+id+"'s own keys", kvschema.MachineRules(id))
	if err != nil {
		return "", err
	}
	// A machine configured again (adopted again) keeps the token it has:
	// its config, and so its node, stay as they are.
	toks, _, err := c.ACL().TokenListFiltered(api.ACLTokenFilterOptions{Policy: own.ID}, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return "", fmt.Errorf("list the tokens of %s: %w", id, err)
	}
	for _, t := range toks {
		if full, _, err := c.ACL().TokenRead(t.AccessorID, (&api.QueryOptions{}).WithContext(ctx)); err == nil && full != nil && full.Description == machineDescription+id {
			return full.SecretID, nil
		}
	}
	tok, _, err := c.ACL().TokenCreate(&api.ACLToken{
		Description:    machineDescription + id,
		Policies:       []*api.ACLTokenPolicyLink{{ID: shared.ID}, {ID: own.ID}},
		NodeIdentities: []*api.ACLNodeIdentity{{NodeName: id, Datacenter: "dc1"}},
	}, w)
	if err != nil {
		return "", fmt.Errorf("create the token of %s: %w", id, err)
	}
	return tok.SecretID, nil
}

// GrantWork returns the executor's Grant (reconcile.Executor): before the
// leader gives a client machine a work order, that machine's own policy
// gets the rules of this version (kvschema.MachineRules: its work orders).
// A machine without a policy of its own holds the cluster's token (a
// server) and needs nothing. It is asked every time, not remembered:
// orders are rare, and an older leader may have written older rules
// meanwhile.
func GrantWork(c *api.Client) func(ctx context.Context, host string) error {
	return func(ctx context.Context, host string) error {
		p, _, err := c.ACL().PolicyReadByName(MachinePolicy(host), (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return fmt.Errorf("read the policy of %s: %w", host, err)
		}
		if p != nil && p.Rules != kvschema.MachineRules(host) {
			if _, err := EnsurePolicy(ctx, c, MachinePolicy(host), machineDescription+host+"'s own keys", kvschema.MachineRules(host)); err != nil {
				return err
			}
		}
		return nil
	}
}

// UpdateMachinePolicies rewrites every client machine's own policy that an
// older version wrote with other rules (kvschema.MachineRules): a client
// made before clients lost the write of their inventory record would keep
// it, and could make itself a server in the leader's eyes, until the
// leader next gave it a work order. A new leader does it once; it blocks
// until done or ctx ends.
func UpdateMachinePolicies(ctx context.Context, c *api.Client) error {
	ps, _, err := c.ACL().PolicyList((&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("list policies: %w", err)
	}
	for _, p := range ps {
		id, ok := strings.CutPrefix(p.Name, machinePolicyPrefix)
		if !ok {
			continue
		}
		full, _, err := c.ACL().PolicyRead(p.ID, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return fmt.Errorf("read policy %s: %w", p.Name, err)
		}
		if full == nil || full.Rules == kvschema.MachineRules(id) {
			continue
		}
		if _, err := EnsurePolicy(ctx, c, p.Name, machineDescription+id+"'s own keys", kvschema.MachineRules(id)); err != nil {
			return err
		}
	}
	return nil
}

// EnsurePolicy returns the ACL policy of that name, made, or made right
// when an older version wrote other rules: the rules follow kvschema's
// layout. Two callers at once (two spawns of one pass, each making its
// machine's token) may both find it missing; the one whose create loses
// reads it again and goes on with the winner's, where it once failed its
// spawn.
func EnsurePolicy(ctx context.Context, c *api.Client, name, desc, rules string) (*api.ACLPolicy, error) {
	w := (&api.WriteOptions{}).WithContext(ctx)
	for attempt := 1; ; attempt++ {
		p, _, err := c.ACL().PolicyReadByName(name, (&api.QueryOptions{}).WithContext(ctx))
		switch {
		case err != nil:
			return nil, fmt.Errorf("read policy %s: %w", name, err)
		case p == nil:
			p, _, err = c.ACL().PolicyCreate(&api.ACLPolicy{Name: name, Description: desc, Rules: rules}, w)
			if err != nil && attempt < 3 && strings.Contains(err.Error(), "already exists") {
				continue // made meanwhile by another caller: use it
			}
		case p.Rules != rules:
			p.Rules = rules
			p, _, err = c.ACL().PolicyUpdate(p, w)
		}
		if err != nil {
			return nil, fmt.Errorf("policy %s: %w", name, err)
		}
		return p, nil
	}
}

// RemoveMachineToken deletes a removed machine's tokens and its own
// policy: its credentials die with its record. A machine that has none (a
// server, or one made before) is no error.
func RemoveMachineToken(ctx context.Context, c *api.Client, id string) error {
	p, _, err := c.ACL().PolicyReadByName(MachinePolicy(id), (&api.QueryOptions{}).WithContext(ctx))
	if err != nil || p == nil {
		return err
	}
	toks, _, err := c.ACL().TokenListFiltered(api.ACLTokenFilterOptions{Policy: p.ID}, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return err
	}
	w := (&api.WriteOptions{}).WithContext(ctx)
	for _, t := range toks {
		if _, err := c.ACL().TokenDelete(t.AccessorID, w); err != nil {
			return fmt.Errorf("delete the token of %s: %w", id, err)
		}
	}
	_, err = c.ACL().PolicyDelete(p.ID, w)
	return err
}
