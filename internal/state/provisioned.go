package state

import (
	"time"

	"github.com/raptiformica/raptiformica/internal/kvschema"
)

// The states of a machine's provisioning, as its agent publishes them.
const (
	// ProvisionRunning: the agent is running steps now.
	ProvisionRunning = "running"
	// ProvisionOK: every provisioner of the checksum succeeded.
	ProvisionOK = "ok"
	// ProvisionFailed: a provisioner failed; the agent retries it with
	// backoff.
	ProvisionFailed = "failed"
)

// Provisioned is what a machine's agent publishes about its provisioning
// (kvschema.Provisioned/<machine id>): the machine's provisioners run on
// the machine itself, and the leader, `status`, `members` and the status
// page read the outcome here.
//
// A machine's provisioning goes running -> ok, or running -> failed ->
// running (a retry, with backoff) -> ok; a changed description starts it
// again at running with a new Checksum.
type Provisioned struct {
	Machine     string `json:"machine"`
	MachineType string `json:"machine_type"`
	// State is ProvisionRunning, ProvisionOK or ProvisionFailed.
	State string `json:"state"`
	// Checksum is the machine type's rules.MachineType.ProvisionChecksum
	// the state is for: a machine is provisioned for the description in
	// force only when it equals the description's.
	Checksum string `json:"checksum"`
	// Time is when the state was reached.
	Time time.Time `json:"time"`
	// Provisioner names the one running or failed.
	Provisioner string `json:"provisioner,omitempty"`
	// Error says why it failed; Output holds the last lines it printed.
	Error  string `json:"error,omitempty"`
	Output string `json:"output,omitempty"`
	// Failures counts the failed attempts in a row.
	Failures int `json:"failures,omitempty"`
	// Provisioners are the outcome of each provisioner, in order.
	Provisioners []ProvisionerResult `json:"provisioners,omitempty"`
}

// ProvisionerResult is one provisioner's outcome on one machine.
type ProvisionerResult struct {
	Name string `json:"name"`
	// Commit is the source's commit the steps ran in; empty without a
	// source.
	Commit string `json:"commit,omitempty"`
	// Ran says the steps ran this time; false when they had already
	// succeeded for the same source commit and steps.
	Ran bool `json:"ran"`
	// Warning says what went wrong without failing it: a source that
	// could not be updated, whose last checkout was used.
	Warning string `json:"warning,omitempty"`
}

// ReadyFor reports whether the machine counts as provisioned for a
// description whose checksum for its type is checksum.
func (p Provisioned) ReadyFor(checksum string) bool {
	return p.State == ProvisionOK && p.Checksum == checksum
}

// LastLine is the last line of the output, or else the error: what a
// one-line status shows of a failure.
func (p Provisioned) LastLine() string {
	out := p.Output
	for len(out) > 0 && out[len(out)-1] == '\n' {
		out = out[:len(out)-1]
	}
	for i := len(out) - 1; i >= 0; i-- {
		if out[i] == '\n' {
			out = out[i+1:]
			break
		}
	}
	if out == "" {
		return p.Error
	}
	return out
}

// MaxProvisionedSize bounds one stored record: the agent keeps its output
// to MaxProvisionedOutput, and the rest is names and checksums.
const MaxProvisionedSize = 64 << 10

// MaxProvisionedOutput bounds the output a record carries: the last lines
// that say what failed, not the whole log, which stays on the machine.
const MaxProvisionedOutput = 8 << 10

// ParseProvisioned reads the stored record of the machine id.
func ParseProvisioned(id string, b []byte) (Provisioned, error) {
	return Decode[Provisioned](ProvisionedKind, kvschema.Provisioned+id, id, b, MaxProvisionedSize)
}

// RecordKey is the machine the record is of (Keyed).
func (p Provisioned) RecordKey() string { return p.Machine }

// ProvisionedKind names provisioning records in messages.
const ProvisionedKind = "provisioning record"
