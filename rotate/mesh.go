package rotate

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/hashicorp/consul/api"

	"github.com/raptiformica/raptiformica/internal/kvschema"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/mesh"
)

// Mesh replaces the overlay's link secret, so that every link is made
// again with the new one and no machine is cut off at any point.
//
// A link's handshake checks one secret on each side (the yggdrasil
// library takes one password per listener and per dialled peer), so a
// node cannot accept two at once. It can dial with two: it dials each peer
// once per secret it holds, and whichever secret the peer listens with,
// one dial matches. A link needs one of its two ends to dial the other
// with the secret the other listens with; the rotation keeps that true for
// every pair at every step, with the secrets in KV as the steps
// (kvschema.MeshSecrets) and every agent applying what the KV holds on
// each pass of its mesh sync (listen with the current secret, dial with
// all), keeping it in its data folder before it applies it (so that a
// restart comes back at the same step: the node config's secret is the
// one the machine was made with), and publishing the fingerprints of the
// secrets it runs with in its mesh entry:
//
//  1. next = N: every node dials with N too, still listening with S.
//     Waited for: every member holds both.
//  2. current = N, previous = S: every node listens with N; links already
//     up stay up (they run on their own connections), and every dialler
//     holds N, so new links match too. Waited for: every member listens
//     with N.
//  3. previous dropped: every node stops dialling with S, peer by peer
//     once that peer's link dialled with N is up (mesh.Node.SetSecrets),
//     so no link goes down. Waited for: every member runs on N alone.
//
// From then on a link with S is refused by every member. A machine made
// during a rotation is given the newest secret (every member dials with it
// at every step) and takes the steps like any member once it links. A
// step that times out leaves the cluster at the step before, whose links
// all work; run again, the rotation carries on from there.
func Mesh(ctx context.Context, c *api.Client, opts Options) error {
	store := kvschema.New(c)
	secrets, err := meshSecrets(ctx, opts, store)
	if err != nil {
		return err
	}
	if secrets.Current == "" {
		return errors.New("the cluster runs without the mesh (it has no mesh secret): there is nothing to rotate")
	}
	if _, err := settle(ctx, opts, c); err != nil {
		return err
	}
	switch {
	case secrets.Next != "":
		opts.printf("carrying on with a rotation that was started before")
	case secrets.Previous != "":
		opts.printf("carrying on with a rotation that was started before")
		return finishMesh(ctx, opts, c, store, secrets)
	default:
		cctx, cancel := opts.call(ctx)
		err := store.StartMeshRotation(cctx, secrets, mesh.NewSecret())
		cancel()
		if err != nil {
			return fmt.Errorf("start the mesh rotation: %w", err)
		}
		if secrets, err = meshSecrets(ctx, opts, store); err != nil {
			return err
		}
	}
	old, next := secrets.Current, secrets.Next
	opts.printf("step 1 of 3: every member dials with the new mesh secret too")
	if err := waitMesh(ctx, opts, c, store, "every member to dial with the new mesh secret too", holdsBoth(old, next)); err != nil {
		return fmt.Errorf("%w; every link still runs on the old secret: run `raptiformica rotate mesh` again to carry on", err)
	}
	cctx, cancel := opts.call(ctx)
	err = store.PromoteMeshSecret(cctx, secrets)
	cancel()
	if err != nil {
		return fmt.Errorf("make the new mesh secret current: %w", err)
	}
	if secrets, err = meshSecrets(ctx, opts, store); err != nil {
		return err
	}
	return finishMesh(ctx, opts, c, store, secrets)
}

// finishMesh takes steps 2 and 3 from the KV at step 2.
func finishMesh(ctx context.Context, opts Options, c *api.Client, store *kvschema.Store, secrets kvschema.MeshSecrets) error {
	opts.printf("step 2 of 3: every member listens with the new mesh secret")
	if err := waitMesh(ctx, opts, c, store, "every member to listen with the new mesh secret", listensWith(secrets.Current)); err != nil {
		return fmt.Errorf("%w; members dial with both secrets meanwhile: run `raptiformica rotate mesh` again to carry on", err)
	}
	cctx, cancel := opts.call(ctx)
	err := store.FinishMeshRotation(cctx, secrets)
	cancel()
	if err != nil {
		return fmt.Errorf("retire the old mesh secret: %w", err)
	}
	opts.printf("step 3 of 3: every member drops the old mesh secret once its links run on the new one")
	if err := waitMesh(ctx, opts, c, store, "every member to run on the new mesh secret alone", runsOn(secrets.Current)); err != nil {
		return fmt.Errorf("%w; a member keeps dialling with the old secret until its link with the new one is up", err)
	}
	if _, err := settle(ctx, opts, c); err != nil {
		return fmt.Errorf("after the rotation: %w", err)
	}
	opts.printf("done: every link runs on the new mesh secret; the old one is refused")
	return nil
}

func meshSecrets(ctx context.Context, opts Options, store *kvschema.Store) (kvschema.MeshSecrets, error) {
	cctx, cancel := opts.call(ctx)
	defer cancel()
	s, err := store.MeshSecrets(cctx, &api.QueryOptions{RequireConsistent: true})
	if err != nil {
		return s, fmt.Errorf("read the mesh secrets: %w", err)
	}
	return s, nil
}

// waitMesh waits until every machine that must take the step has published
// a mesh entry that done accepts.
func waitMesh(ctx context.Context, opts Options, c *api.Client, store *kvschema.Store, what string, done func(state.MeshEntry) bool) error {
	return waitFor(ctx, opts, what, func(ctx context.Context) ([]string, error) {
		cl, err := look(ctx, opts, c)
		if err != nil {
			return nil, err
		}
		cctx, cancel := opts.call(ctx)
		defer cancel()
		nodes, err := mesh.ReadEntries(cctx, store)
		if err != nil {
			return nil, err
		}
		return meshLagging(cl.ids(), nodes, done), nil
	})
}

// meshLagging names the machines of ids whose mesh entry done does not
// accept, or that have none.
func meshLagging(ids []string, nodes map[string]state.MeshEntry, done func(state.MeshEntry) bool) []string {
	var out []string
	for _, id := range ids {
		n, ok := nodes[id]
		switch {
		case !ok:
			out = append(out, id+" has published no mesh entry")
		case !done(n):
			out = append(out, fmt.Sprintf("%s has not got there (it listens with %s, dials with %v too)", id, n.ListenSecret, n.DialSecrets))
		}
	}
	return out
}

// held are the fingerprints of the secrets a member runs with.
func held(n state.MeshEntry) []string {
	if n.ListenSecret == "" {
		return n.DialSecrets
	}
	return append([]string{n.ListenSecret}, n.DialSecrets...)
}

// holdsBoth is step 1's: the member listens or dials with each secret.
func holdsBoth(old, next string) func(state.MeshEntry) bool {
	return func(n state.MeshEntry) bool {
		h := held(n)
		return slices.Contains(h, mesh.Fingerprint(old)) && slices.Contains(h, mesh.Fingerprint(next))
	}
}

// listensWith is step 2's.
func listensWith(secret string) func(state.MeshEntry) bool {
	return func(n state.MeshEntry) bool { return n.ListenSecret == mesh.Fingerprint(secret) }
}

// runsOn is step 3's: the member listens and dials with secret alone.
func runsOn(secret string) func(state.MeshEntry) bool {
	return func(n state.MeshEntry) bool {
		return n.ListenSecret == mesh.Fingerprint(secret) && len(n.DialSecrets) == 0
	}
}
