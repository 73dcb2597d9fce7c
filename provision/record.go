package provision

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/raptiformica/raptiformica/reconcile"
)

// AdoptBackend is the backend name recorded for machines adopted by hand.
const AdoptBackend = "ssh"

// AdoptRecorded adopts a machine by hand (outside the control loop, which
// keeps it from then on) and keeps its inventory record. The record is
// written once the adoption has run, not before: a host that is a node
// already keeps its machine ID, which only the adoption reads. A machine
// that joined is recorded joining (the leader marks it joined); a failed
// adoption is recorded destroying, saying at which step it failed, so that
// the leader removes what it left; a member that was fine before keeps its
// record, and the error is the answer.
func (a *Adopter) AdoptRecorded(ctx context.Context, inv *reconcile.Inventory, spec AdoptSpec) (Result, error) {
	began := time.Now()
	res, err := a.Adopt(ctx, spec)
	id := res.Node.MachineID
	rec, found, gerr := inv.Get(ctx, id)
	if gerr != nil {
		return res, errors.Join(err, gerr)
	}
	if !found {
		rec = reconcile.Record{ID: id, Type: spec.Node.MachineType, Backend: AdoptBackend, Created: began, Manual: true}
	}
	rec.Address, rec.Updated = spec.Host.Addr, time.Now()
	switch {
	case err != nil && found && rec.State == reconcile.StateJoined:
		return res, err
	case err != nil:
		step := "adopt"
		if se := (*StepError)(nil); errors.As(err, &se) {
			step = se.Step
		}
		rec.State, rec.Reason = reconcile.StateDestroying, fmt.Sprintf("adopting %s failed at %s: %v", spec.Host, step, err)
		if _, perr := inv.Put(ctx, rec); perr != nil && res.Changed {
			return res, errors.Join(err, perr)
		}
		return res, err
	}
	if !found || rec.State != reconcile.StateJoined {
		rec.State, rec.Reason = reconcile.StateJoining, "adopted over SSH"
		if _, err := inv.Put(ctx, rec); err != nil {
			return res, fmt.Errorf("record adopted machine %s: %w", id, err)
		}
	}
	return res, nil
}
