package reconcile

import (
	"fmt"
	"sort"
	"time"

	"github.com/raptiformica/raptiformica/rules"
)

// orphanAge is how old an instance without a record must be before it is
// destroyed, so that a machine whose seed record is still being written is
// not taken for an orphan.
const orphanAge = 10 * time.Second

// Plan decides what to do now. It is a pure function of the description, the
// observed state and the time: it does no I/O, so that every decision the
// control loop makes can be tested from a table. It is level-triggered: given
// the same inputs it gives the same actions, whatever happened before.
func Plan(p *rules.Platform, obs Observed, now time.Time) Decision {
	d := Decision{Types: map[string]TypeStatus{}}
	pol := p.Policy
	wakeAt := func(t time.Time) {
		if t.After(now) && (d.NextCheck.IsZero() || t.Before(d.NextCheck)) {
			d.NextCheck = t
		}
	}

	type tally struct {
		live, pending, failedIn, failedOut int
		liveRecs                           []Record
	}
	tallies := map[string]*tally{}
	for _, name := range p.MachineNames() {
		tallies[name] = &tally{}
	}
	var marks, reaps, strays []Action
	failed, failedServers := 0, 0
	pendingTotal := 0

	for _, id := range sortedKeys(obs.Records) {
		r := obs.Records[id]
		mt, known := p.Machines[r.Type]
		t := tallies[r.Type]
		if t == nil {
			t = &tally{}
		}
		if r.Manual {
			// A machine spawned by hand is outside the rules: it neither
			// counts toward its type nor is scaled down, but it is
			// still reaped when it dies (and not replaced).
			t = &tally{}
		}
		m, isMember := obs.Members[id]
		alive := isMember && m.Status == MemberAlive
		instGone := false
		// The backend's view only adds speed (a dead process shows there
		// before Consul notices); the leader itself is evidently running,
		// whatever its backend lists.
		if insts, listed := obs.Instances[r.Backend]; listed && id != obs.Self {
			in, exists := insts[id]
			instGone = exists && !in.Running || !exists && !obs.LocalOnly[r.Backend]
		}
		if obs.InFlight[id] {
			// An action is running on it; count it as what it will be.
			switch r.State {
			case StateSpawning, StateJoining:
				t.pending++
				pendingTotal++
			case StateJoined:
				t.live++
			}
			continue
		}
		if !known && r.State != StateDestroying {
			strays = append(strays, Action{Kind: KindScaleDown, MachineID: id, Type: r.Type, Backend: r.Backend, Reason: fmt.Sprintf("machine type %q is not in the description", r.Type)})
		}
		switch r.State {
		case StateDestroying:
			reaps = append(reaps, Action{Kind: KindReap, MachineID: id, Type: r.Type, Backend: r.Backend, Reason: "finish removal: " + r.Reason})
		case StateSpawning, StateJoining:
			switch {
			case alive && !instGone && (!m.Server || m.Voter):
				marks = append(marks, Action{Kind: KindMarkJoined, MachineID: id, Type: r.Type, Backend: r.Backend, Reason: "member is alive"})
				t.live++
				t.liveRecs = append(t.liveRecs, r)
			case now.Sub(r.Updated) >= pol.ProvisionTimeout:
				reaps = append(reaps, Action{Kind: KindReap, MachineID: id, Type: r.Type, Backend: r.Backend,
					Reason: fmt.Sprintf("did not join within the provision timeout (%s)", pol.ProvisionTimeout)})
			default:
				t.pending++
				pendingTotal++
				wakeAt(r.Updated.Add(pol.ProvisionTimeout))
			}
		case StateJoined, StateFailed:
			back := r.State == StateFailed || !r.FailedSince.IsZero()
			if alive && !instGone && back && m.Server && !m.Voter {
				// A server back from a partition may have been dropped
				// from Raft; until autopilot makes it a voter again it
				// adds nothing to quorum, so it is not yet live.
				t.pending++
				pendingTotal++
				continue
			}
			if alive && !instGone {
				if back {
					marks = append(marks, Action{Kind: KindMarkJoined, MachineID: id, Type: r.Type, Backend: r.Backend, Reason: "member is alive again"})
				}
				t.live++
				t.liveRecs = append(t.liveRecs, r)
				continue
			}
			failed++
			if known && mt.ConsulServer {
				failedServers++
			}
			switch {
			case r.FailedSince.IsZero():
				why := "member is " + string(m.Status)
				if !isMember {
					why = "not a Consul member"
				}
				if instGone {
					why = "instance is gone from backend " + r.Backend
				}
				marks = append(marks, Action{Kind: KindMarkFailed, MachineID: id, Type: r.Type, Backend: r.Backend, Reason: why})
				t.failedIn++
				wakeAt(now.Add(pol.GracePeriod))
			case now.Sub(r.FailedSince) < pol.GracePeriod && !instGone:
				t.failedIn++
				wakeAt(r.FailedSince.Add(pol.GracePeriod))
			default:
				// The grace period waits out a member that may come back
				// (a network blip); a machine its backend reports gone
				// will not, and a machine cut off behind it (the middle of
				// a chain) needs its replacement before its own grace ends.
				why := fmt.Sprintf("failed for %s, longer than the grace period (%s)", now.Sub(r.FailedSince).Round(time.Second), pol.GracePeriod)
				if instGone {
					why = "instance is gone from backend " + r.Backend + ": no grace period to wait out"
				}
				reaps = append(reaps, Action{Kind: KindReap, MachineID: id, Type: r.Type, Backend: r.Backend, Reason: why})
				t.failedOut++
			}
		}
	}

	if failed > pol.MaxUnhealthy {
		d.Halted = fmt.Sprintf("%d members are failed, more than max_unhealthy (%d): not replacing or reaping until fewer are", failed, pol.MaxUnhealthy)
	}

	var spawns, downs []Action
	allSettled := pendingTotal == 0 && failed == 0
	for _, name := range p.MachineNames() {
		mt := p.Machines[name]
		t := tallies[name]
		d.Types[name] = TypeStatus{Min: mt.Min, Max: mt.Max, Live: t.live, Pending: t.pending, Failed: t.failedIn + t.failedOut}
		have := t.live + t.pending + t.failedIn
		if need := mt.Min - have; need > 0 && d.Halted == "" {
			if last, ok := obs.LastSpawn[name]; ok && now.Sub(last) < pol.Cooldown {
				wakeAt(last.Add(pol.Cooldown))
				d.Waiting = append(d.Waiting, fmt.Sprintf("machine %q: %d to spawn after the cooldown (%s)", name, need, (pol.Cooldown-now.Sub(last)).Round(time.Millisecond)))
				continue
			}
			budget := pol.MaxConcurrentSpawns - pendingTotal
			if budget <= 0 {
				d.Waiting = append(d.Waiting, fmt.Sprintf("machine %q: %d to spawn once fewer than max_concurrent_spawns (%d) are in flight", name, need, pol.MaxConcurrentSpawns))
				continue
			}
			backend, skipped := pickBackend(mt.Backends, obs, now, wakeAt)
			d.Waiting = append(d.Waiting, skipped...)
			if backend == "" {
				d.Waiting = append(d.Waiting, fmt.Sprintf("machine %q: %d to spawn, but no backend is usable", name, need))
				continue
			}
			n := min(need, budget)
			for i := 0; i < n; i++ {
				spawns = append(spawns, Action{Kind: KindSpawn, Type: name, Backend: backend, Reason: fmt.Sprintf("%d of min %d", have+i, mt.Min)})
			}
			pendingTotal += n
			if n < need {
				d.Waiting = append(d.Waiting, fmt.Sprintf("machine %q: %d more to spawn once fewer than max_concurrent_spawns (%d) are in flight", name, need-n, pol.MaxConcurrentSpawns))
			}
			continue
		}
		if excess := t.live - mt.Max; excess > 0 && allSettled {
			// Removing servers changes the Raft quorum: one at a time,
			// and only while none is failed.
			if mt.ConsulServer {
				if failedServers > 0 {
					continue
				}
				excess = 1
			}
			downs = append(downs, scaleDown(t.liveRecs, excess, obs.Self, mt)...)
		}
	}
	if allSettled && len(strays) > 0 && len(spawns) == 0 {
		// Machines of a removed type go one per pass, after the types that
		// remain are at strength, so that a server type renamed in the
		// description never drops the cluster below quorum.
		for _, a := range strays {
			if a.MachineID != obs.Self {
				downs = append(downs, a)
				break
			}
		}
	}

	d.Actions = append(d.Actions, marks...)
	// Replacements go before removals: spawn first, then reap.
	d.Actions = append(d.Actions, spawns...)
	if d.Halted == "" {
		d.Actions = append(d.Actions, reaps...)
	} else {
		for _, a := range reaps {
			if obs.Records[a.MachineID].State != StateJoined && obs.Records[a.MachineID].State != StateFailed {
				d.Actions = append(d.Actions, a) // never-joined or half-removed machines are no quorum risk
			}
		}
	}
	d.Actions = append(d.Actions, downs...)
	d.Actions = append(d.Actions, orphans(obs, now, wakeAt)...)
	return d
}

func pickBackend(names []string, obs Observed, now time.Time, wake func(time.Time)) (string, []string) {
	var skipped []string
	for _, b := range names {
		if why, bad := obs.BackendErrors[b]; bad {
			skipped = append(skipped, fmt.Sprintf("backend %q skipped: %s", b, why))
			continue
		}
		if until, ok := obs.BackoffUntil[b]; ok && now.Before(until) {
			wake(until)
			why := ""
			if last := obs.BackendFailures[b]; last != "" {
				why = " (last: " + last + ")"
			}
			skipped = append(skipped, fmt.Sprintf("backend %q skipped: backing off for %s after failures%s", b, until.Sub(now).Round(time.Millisecond), why))
			continue
		}
		return b, skipped
	}
	return "", skipped
}

// scaleDown picks the newest machines that are neither the leader, nor
// spawned by hand.
func scaleDown(live []Record, n int, self string, mt rules.MachineType) []Action {
	cands := make([]Record, 0, len(live))
	for _, r := range live {
		if r.ID != self && !r.Manual {
			cands = append(cands, r)
		}
	}
	sort.Slice(cands, func(i, j int) bool {
		if !cands[i].Created.Equal(cands[j].Created) {
			return cands[i].Created.After(cands[j].Created)
		}
		return cands[i].ID > cands[j].ID
	})
	var out []Action
	for _, r := range cands[:min(n, len(cands))] {
		out = append(out, Action{Kind: KindScaleDown, MachineID: r.ID, Type: r.Type, Backend: r.Backend, Reason: fmt.Sprintf("more than max %d", mt.Max)})
	}
	return out
}

func orphans(obs Observed, now time.Time, wake func(time.Time)) []Action {
	var out []Action
	for _, b := range sortedKeys(obs.Instances) {
		insts := obs.Instances[b]
		for _, id := range sortedKeys(insts) {
			in := insts[id]
			if _, ok := obs.Records[id]; ok || obs.InFlight[id] || id == obs.Self {
				// The leader evidently runs: whatever its record's fate
				// (a KV being re-seeded), it never destroys itself.
				continue
			}
			if !in.Created.IsZero() && now.Sub(in.Created) < orphanAge {
				wake(in.Created.Add(orphanAge))
				continue
			}
			out = append(out, Action{Kind: KindDestroyOrphan, MachineID: id, Type: in.MachineType, Backend: b, Reason: "instance has no inventory record"})
		}
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
