package reconcile

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/raptiformica/raptiformica/internal/state"
	"github.com/raptiformica/raptiformica/internal/telemetry"
	"github.com/raptiformica/raptiformica/rules"
)

func (e *Executor) mark(ctx context.Context, r Record, s State, reason string) error {
	_, err := e.Inventory.Put(ctx, marked(r, s, reason, e.Clock.Now()))
	return err
}

// marked is r moved to state s at now.
func marked(r Record, s State, reason string, now time.Time) Record {
	r.State, r.Updated = s, now
	switch s {
	case StateFailed:
		r.FailedSince, r.Reason = now, reason
	case StateJoined:
		r.FailedSince, r.Reason = time.Time{}, ""
	}
	return r
}

// markAll writes a pass's marks (joined, failed) together, in as few
// transactions as Consul allows: a pass that sees fifty machines come up
// is one Raft write, not fifty writes and fifty reads.
func (e *Executor) markAll(ctx context.Context, p *rules.Platform, obs Observed, actions []state.Action) error {
	var marks []state.Action
	var recs []Record
	now := e.Clock.Now()
	for _, a := range actions {
		switch a.Kind {
		case state.KindMarkJoined:
			recs = append(recs, marked(obs.Records[a.MachineID], StateJoined, a.Reason, now))
		case state.KindMarkFailed:
			recs = append(recs, marked(obs.Records[a.MachineID], StateFailed, a.Reason, now))
		default:
			continue
		}
		marks = append(marks, a)
	}
	if len(marks) == 0 {
		return nil
	}
	written, err := e.Inventory.PutAll(ctx, recs)
	done := make(map[string]bool, len(written))
	for _, r := range written {
		done[r.ID] = true
	}
	for _, a := range marks {
		log := e.Log.With(telemetry.KeyAction, string(a.Kind), telemetry.KeyMachineID, a.MachineID, telemetry.KeyMachineType, a.Type)
		if !done[a.MachineID] {
			e.finish(a, fmt.Errorf("write the mark of %s: not written", a.MachineID))
			log.Error("action failed", telemetry.KeyError, err)
			continue
		}
		e.finish(a, nil)
		if a.Kind == state.KindMarkJoined {
			log.Info("machine joined", telemetry.KeyReason, a.Reason)
			e.Hooks.Fire(ctx, p, "after_join", a)
		} else {
			log.Warn("machine failed", telemetry.KeyReason, a.Reason)
		}
	}
	return err
}

// restore writes the record of an alive member that has none, from its
// backend's listing. It only ever creates: a record written meanwhile (the
// mirror's re-seed, another leader) is the better one and stays.
func (e *Executor) restore(ctx context.Context, obs Observed, a state.Action) error {
	in := obs.Instances[a.Backend][a.MachineID]
	scope := ""
	if a.Host != "" {
		bo := obs.Offers[a.Host].Backends[a.Backend]
		scope = bo.Scope
		for _, hin := range bo.Instances {
			if hin.MachineID == a.MachineID {
				in = hin
			}
		}
	}
	now := e.Clock.Now()
	created := in.Created
	if created.IsZero() || a.Manual {
		// A client host's word is not taken for when it made the
		// machine (an old one is the first to stay on a scale-down).
		created = now
	}
	r := Record{ID: a.MachineID, Type: a.Type, Backend: a.Backend, Host: a.Host, Scope: scope, State: StateJoined, Manual: a.Manual,
		Address: cmp.Or(in.Address, obs.Members[a.MachineID].Address), Addresses: in.Addresses,
		Created: created, Updated: now, Reason: a.Reason}
	if _, err := e.Inventory.Put(ctx, r); err != nil && !errors.Is(err, state.ErrConflict) {
		return err
	}
	return nil
}
