package enrol

import (
	"context"
	"errors"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/raptiformica/raptiformica/internal/clock"
	"github.com/raptiformica/raptiformica/internal/jointoken"
	"github.com/raptiformica/raptiformica/internal/nodeconfig"
	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/reconcile"
	"github.com/raptiformica/raptiformica/rules"
)

// JoinBackend is the backend name a machine joined with a token records:
// nothing made it, its operator did.
const JoinBackend = "by-hand"

// Joiner is a server's side of the join exchange: it gives a machine that
// shows a valid join token its node config (a new machine ID of the
// token's type, the cluster's credentials and a certificate signed for
// it) and records the machine in the inventory (joining, as a spawn
// does), so that the record is the server's word and not the new
// machine's. The token is the authorisation, spent one use per machine by
// check-and-set before anything is made (given back when the machine could
// not be made). Package daemon serves it over TLS only, on a server's
// agent: the secret must not travel in clear, the joining machine has
// checked the agent's CA by the token's hash and that its certificate is a
// server's before it sent it (agentapi.Join, from cluster.Join), and only servers hold the CA
// key that signs.
type Joiner struct {
	// Tokens is the join tokens' folder (state.JoinTokens).
	Tokens jointoken.Folder
	// Inventory is where the new machine is recorded.
	Inventory *reconcile.Inventory
	// Platform returns the description the server holds now; nil while
	// it has none.
	Platform func() *rules.Platform
	// NodeConfig makes the new machine's config (NodeConfigs.For).
	NodeConfig reconcile.NodeConfigFunc
	Clock      clock.Clock
	Log        hclog.Logger
}

// JoinFailure says why a join was not granted, and so what the caller
// answers: the token's fault, a bad request, a server not ready, or a
// failure of the KV or of the machine's config.
type JoinFailure int

// The ways a join fails.
const (
	// JoinRefused: the token is unknown, revoked, expired, used up, or
	// the secret is wrong. Nothing was spent.
	JoinRefused JoinFailure = iota + 1
	// JoinBadRequest: the request cannot be met as asked (a type other
	// than the token's, a type the description lacks). Nothing was spent.
	JoinBadRequest
	// JoinNotReady: the server has no description yet; try again.
	JoinNotReady
	// JoinFailed: the KV or the machine's config failed; a use spent was
	// given back. Try again.
	JoinFailed
)

// JoinError is a join that was not granted: its message is what the
// joining machine is told.
type JoinError struct {
	Failure JoinFailure
	Msg     string
}

// Error is the message for the joining machine.
func (e *JoinError) Error() string { return e.Msg }

// Join grants req, a join asked from the address from (for the logs): it
// checks the token's secret, expiry and uses, and the type asked, spends a
// use, makes the machine's config and records the machine. What can be
// refused is refused before the use is spent; the secret is checked first,
// so that nobody without it learns the token's type. A join not granted is
// a *JoinError. It blocks on KV and on the config's making until done or
// ctx ends.
func (j *Joiner) Join(ctx context.Context, req jointoken.Request, from string) (nodeconfig.Config, error) {
	fail := func(f JoinFailure, msg string) (nodeconfig.Config, error) {
		return nodeconfig.Config{}, &JoinError{Failure: f, Msg: msg}
	}
	rec, found, _, err := j.Tokens.Get(ctx, req.TokenID, nil)
	if err != nil && !errors.Is(err, state.ErrBadRecord) {
		return fail(JoinFailed, "read the token: "+err.Error())
	}
	if !found {
		j.Log.Warn("join refused: unknown or revoked token", telemetry.KeyToken, req.TokenID, telemetry.KeyAddress, from, telemetry.KeyError, err)
		return fail(JoinRefused, "unknown or revoked join token")
	}
	now := j.Clock.Now()
	if err := jointoken.Check(rec, req.Secret, now); err != nil {
		j.Log.Warn("join refused", telemetry.KeyToken, req.TokenID, telemetry.KeyAddress, from, telemetry.KeyError, err)
		return fail(JoinRefused, err.Error())
	}
	typ := rec.Type
	if req.Type != "" && req.Type != typ {
		return fail(JoinBadRequest, "this token joins machines of type "+typ+", not "+req.Type)
	}
	p := j.Platform()
	if p == nil {
		return fail(JoinNotReady, "this agent has no description yet: try again")
	}
	mt, ok := p.Machines[typ]
	if !ok {
		return fail(JoinBadRequest, "the description has no machine type "+typ+" (the token's)")
	}
	if _, err := jointoken.Redeem(ctx, j.Tokens, req.TokenID, req.Secret, now); err != nil {
		j.Log.Warn("join refused", telemetry.KeyToken, req.TokenID, telemetry.KeyAddress, from, telemetry.KeyError, err)
		if refusedToken(err) {
			return fail(JoinRefused, err.Error())
		}
		return fail(JoinFailed, "spend the token: "+err.Error())
	}
	id := reconcile.NewMachineID(typ)
	cfg, err := j.NodeConfig(ctx, p, id, mt, JoinBackend)
	if err == nil {
		_, err = j.Inventory.Put(ctx, reconcile.Record{
			ID: id, Type: typ, Backend: JoinBackend, State: reconcile.StateJoining,
			Created: now, Updated: now, Reason: "joined with token " + req.TokenID,
		})
	}
	if err != nil {
		// The use goes back even when the caller has gone meanwhile.
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer rcancel()
		if rerr := jointoken.Refund(rctx, j.Tokens, req.TokenID); rerr != nil {
			j.Log.Warn("could not give back a join token's use", telemetry.KeyToken, req.TokenID, telemetry.KeyError, rerr)
		}
		return fail(JoinFailed, "configure the machine: "+err.Error())
	}
	j.Log.Info("gave a machine its config for a join token", telemetry.KeyMachineID, id, telemetry.KeyMachineType, typ, telemetry.KeyToken, req.TokenID, telemetry.KeyAddress, from)
	return cfg, nil
}

// refusedToken reports whether err is the token's fault, not the KV's.
func refusedToken(err error) bool {
	for _, e := range []error{jointoken.ErrUnknown, jointoken.ErrUsedUp, jointoken.ErrExpired, jointoken.ErrWrongSecret, jointoken.ErrNoType} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
