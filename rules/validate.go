package rules

import "errors"

// Validation is the outcome of checking a description file, as `platform
// validate --json` prints it.
type Validation struct {
	File          string    `json:"file"`
	Valid         bool      `json:"valid"`
	MachineTypes  int       `json:"machine_types,omitempty"`
	ConsulServers int       `json:"consul_servers,omitempty"`
	Problems      []Problem `json:"problems,omitempty"`
}

// Validate reads and checks the description in file: its outcome, every
// problem found included, and the error ParseFile returns.
func Validate(file string, opts Options) (Validation, error) {
	p, err := ParseFile(file, opts)
	v := Validation{File: file, Valid: err == nil}
	var perr *Error
	switch {
	case errors.As(err, &perr):
		v.Problems = perr.Problems
	case err != nil:
		v.Problems = []Problem{{File: file, Message: err.Error()}}
	default:
		v.MachineTypes, v.ConsulServers = len(p.Machines), p.ServerCount()
	}
	return v, err
}
