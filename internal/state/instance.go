package state

import "time"

// Instance is a machine as a backend sees it: what a backend's List
// returns, what a host's offer lists, and what a done spawn order records.
type Instance struct {
	MachineID   string `json:"machine_id"`
	MachineType string `json:"machine_type"`
	Address     string `json:"address"`
	// Addresses are all the machine's addresses, Address first, for a
	// machine on several networks; empty when Address is the only one.
	Addresses []string  `json:"addresses,omitempty"`
	Running   bool      `json:"running"`
	Created   time.Time `json:"created"`
	// MadeBy is the member that made it (its node config's made_by),
	// where the backend can tell; empty when it cannot.
	MadeBy string `json:"made_by,omitempty"`
}
