package rules

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
)

// MaxProvisionerSteps caps a provisioner's steps: far more than software
// takes to install, and a bound on what a machine records and reruns.
const MaxProvisionerSteps = 100

// MaxProvisioners caps a machine type's provisioners, for the same reason.
const MaxProvisioners = 32

// ProvisionChecksum identifies what the description asks machines of this
// type to provision: every provisioner's name, source, ref and steps, in
// order. A machine publishes the checksum it provisioned for, and the leader
// compares it with this one, so that a machine counts as provisioned only
// for the description in force. It is the same on every node for the same
// description, and the empty string for a type without provisioners.
func (m MachineType) ProvisionChecksum() string {
	if len(m.Provisioners) == 0 {
		return ""
	}
	type spec struct {
		Name   string `json:"name"`
		Source string `json:"source"`
		// Left out when empty, so that a description without refs keeps
		// the checksum its machines published.
		Ref   string     `json:"ref,omitempty"`
		Steps [][]string `json:"steps"`
	}
	specs := make([]spec, len(m.Provisioners))
	for i, p := range m.Provisioners {
		specs[i] = spec{p.Name, p.Source, p.Ref, p.Steps}
	}
	b, _ := json.Marshal(specs) // strings and lists of them always encode
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
