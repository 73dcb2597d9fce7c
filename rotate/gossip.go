package rotate

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/internal/identity"
	"github.com/raptiformica/raptiformica/internal/kvschema"
)

// Gossip replaces the cluster's gossip encryption key through Consul's
// keyring, which every member's Consul keeps in its data folder (and which
// wins over the key in its node config when it restarts):
//
//  1. a new 32-byte key is installed on every member, beside the old one,
//     until every member's keyring holds it (Consul's keyring list counts
//     the members holding each key against the members of the pool);
//  2. it becomes the key new machines are given (the KV's, and the
//     identity in opts.IdentityDir): from here a machine made with it
//     joins once step 3 is done;
//  3. every member encrypts with it (`use`), until every one says so;
//  4. once the machines made meanwhile have joined, the other keys are
//     removed: from then on an agent with the old key is refused.
//
// A member that has not installed the key stops the rotation before step
// 3, naming what Consul said of it; the cluster then runs on the old key,
// with the new one installed, as long as needed. Run again, the rotation
// carries on with the key of step 2 if it got that far (a machine made
// since carries it), else with a new one. It returns the new key.
func Gossip(ctx context.Context, c *api.Client, opts Options) (string, error) {
	if _, err := settle(ctx, opts, c); err != nil {
		return "", err
	}
	store := kvschema.New(c)
	rings, err := keyrings(ctx, opts, c)
	if err != nil {
		return "", err
	}
	cctx, cancel := opts.call(ctx)
	stored, err := store.GossipKey(cctx)
	cancel()
	if err != nil {
		return "", fmt.Errorf("read the gossip key: %w", err)
	}
	key := stored
	if stored == "" || primaryOf(rings) == stored {
		if key, err = identity.NewGossipKey(); err != nil {
			return "", err
		}
	} else {
		opts.printf("carrying on with the key a rotation stored without finishing")
	}

	opts.printf("step 1 of 4: installing a new gossip key on every member")
	if err := converge(ctx, opts, c, "every member to hold the new key",
		func(ctx context.Context, w *api.WriteOptions) error { return c.Operator().KeyringInstall(key, w) },
		func(r []*api.KeyringResponse) []string { return missing(r, key, false) }); err != nil {
		return "", fmt.Errorf("%w; nothing changed for the members: the old key is still the one in use", err)
	}
	if key != stored {
		opts.printf("step 2 of 4: the new key is the one new machines are given")
		cctx, cancel := opts.call(ctx)
		err := store.PutGossipKey(cctx, key)
		cancel()
		if err != nil {
			return "", fmt.Errorf("store the new gossip key: %w", err)
		}
	}
	if err := keepInIdentity(opts.IdentityDir, key); err != nil {
		return "", err
	}

	opts.printf("step 3 of 4: every member encrypts with the new key")
	if err := converge(ctx, opts, c, "every member to encrypt with the new key",
		func(ctx context.Context, w *api.WriteOptions) error { return c.Operator().KeyringUse(key, w) },
		func(r []*api.KeyringResponse) []string { return missing(r, key, true) }); err != nil {
		return "", fmt.Errorf("%w; run `raptiformica rotate gossip` again to finish", err)
	}

	// A machine made before step 2 with the old key, joining after the old
	// key is gone, would be shut out: wait for it here, where it still
	// joins (and then is given the new key by the next look).
	if _, err := settle(ctx, opts, c); err != nil {
		return "", fmt.Errorf("%w; run `raptiformica rotate gossip` again to finish", err)
	}
	if err := converge(ctx, opts, c, "every member, those joined meanwhile too, to encrypt with the new key",
		func(ctx context.Context, w *api.WriteOptions) error {
			if err := c.Operator().KeyringInstall(key, w); err != nil {
				return err
			}
			return c.Operator().KeyringUse(key, w)
		},
		func(r []*api.KeyringResponse) []string { return missing(r, key, true) }); err != nil {
		return "", fmt.Errorf("%w; run `raptiformica rotate gossip` again to finish", err)
	}

	opts.printf("step 4 of 4: removing the old keys")
	rings, err = keyrings(ctx, opts, c)
	if err != nil {
		return "", err
	}
	for _, old := range otherKeys(rings, key) {
		cctx, cancel := opts.call(ctx)
		err := c.Operator().KeyringRemove(old, (&api.WriteOptions{}).WithContext(cctx))
		cancel()
		if err != nil {
			return "", fmt.Errorf("remove an old gossip key: %w; the new key is in use: run `raptiformica rotate gossip` again to finish", err)
		}
	}
	if rings, err = keyrings(ctx, opts, c); err != nil {
		return "", err
	}
	if left := otherKeys(rings, key); len(left) > 0 {
		return "", fmt.Errorf("%d old keys are still installed after removing them; run `raptiformica rotate gossip` again", len(left))
	}
	opts.printf("done: every member encrypts gossip with the new key, the only one installed")
	return key, nil
}

// keepInIdentity replaces the gossip key of the identity kept in dir, if
// dir is set and keeps one.
func keepInIdentity(dir, key string) error {
	if dir == "" {
		return nil
	}
	id, err := identity.Read(dir)
	if errors.Is(err, identity.ErrNone) {
		return nil
	}
	if err != nil {
		return err
	}
	if id.GossipKey == key {
		return nil
	}
	id.GossipKey = key
	if err := identity.Write(dir, id); err != nil {
		return fmt.Errorf("keep the new gossip key in %s: %w", dir, err)
	}
	return nil
}

// keyrings lists every member's keyring, as counts per pool.
func keyrings(ctx context.Context, opts Options, c *api.Client) ([]*api.KeyringResponse, error) {
	cctx, cancel := opts.call(ctx)
	defer cancel()
	r, err := c.Operator().KeyringList((&api.QueryOptions{}).WithContext(cctx))
	if err != nil {
		return nil, fmt.Errorf("list the gossip keyrings: %w", err)
	}
	return r, nil
}

// converge does op (which every member's Consul applies, and which is
// harmless done again) and looks at the keyrings, until check finds
// nothing missing, for at most opts' timeout.
func converge(ctx context.Context, opts Options, c *api.Client, what string,
	op func(context.Context, *api.WriteOptions) error, check func([]*api.KeyringResponse) []string) error {
	return waitFor(ctx, opts, what, func(ctx context.Context) ([]string, error) {
		cctx, cancel := opts.call(ctx)
		opErr := op(cctx, (&api.WriteOptions{}).WithContext(cctx))
		cancel()
		rings, err := keyrings(ctx, opts, c)
		if err != nil {
			// Consul names the members that failed or did not answer.
			return nil, errors.Join(opErr, err)
		}
		lagging := check(rings)
		if len(lagging) > 0 && opErr != nil {
			lagging = append(lagging, "Consul said: "+strings.ReplaceAll(opErr.Error(), "\n", " "))
		}
		return lagging, nil
	})
}

// lan are the responses of the LAN gossip pools (one per datacenter):
// the only ones, without WAN federation.
func lan(rings []*api.KeyringResponse) []*api.KeyringResponse {
	var out []*api.KeyringResponse
	for _, r := range rings {
		if !r.WAN {
			out = append(out, r)
		}
	}
	return out
}

// missing says, per LAN pool, how many members lack key in their keyring,
// or as their primary key when primary is set; nil when none does.
func missing(rings []*api.KeyringResponse, key string, primary bool) []string {
	pools := lan(rings)
	if len(pools) == 0 {
		return []string{"Consul listed no gossip pool"}
	}
	var out []string
	for _, r := range pools {
		have, as := r.Keys[key], "hold the new key"
		if primary {
			have, as = r.PrimaryKeys[key], "encrypt with the new key"
		}
		if have < r.NumNodes {
			out = append(out, fmt.Sprintf("%d of %d members of %s %s%s", have, r.NumNodes, r.Datacenter, as, messages(r)))
		}
	}
	return out
}

// messages is what members said, by name, when any did.
func messages(r *api.KeyringResponse) string {
	if len(r.Messages) == 0 {
		return ""
	}
	var out []string
	for node, msg := range r.Messages {
		out = append(out, node+": "+msg)
	}
	sort.Strings(out)
	return " (" + strings.Join(out, "; ") + ")"
}

// primaryOf is the key every member of every LAN pool encrypts with, or
// "" when they do not agree.
func primaryOf(rings []*api.KeyringResponse) string {
	key := ""
	for _, r := range lan(rings) {
		found := ""
		for k, n := range r.PrimaryKeys {
			if n == r.NumNodes {
				found = k
			}
		}
		if found == "" || key != "" && found != key {
			return ""
		}
		key = found
	}
	return key
}

// otherKeys are the keys installed on any member besides key, sorted.
func otherKeys(rings []*api.KeyringResponse, key string) []string {
	set := map[string]bool{}
	for _, r := range lan(rings) {
		for k := range r.Keys {
			if k != key {
				set[k] = true
			}
		}
	}
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
