// Package systemd carries the agent's systemd unit, so that the binary
// installs the very file the package ships (raptiformica adopt writes it on
// machines it provisions).
package systemd

import (
	_ "embed"
	"strings"
)

//go:embed raptiformica.service
var unit string

// Unit returns the unit with ExecStart naming binary.
func Unit(binary string) []byte {
	return []byte(strings.Replace(unit, "ExecStart=/usr/bin/raptiformica ", "ExecStart="+binary+" ", 1))
}
