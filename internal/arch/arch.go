// Package arch names the processor architectures raptiformica is built for,
// by Go's names, which are what members publish, machine types ask for
// (archs = […]) and the folders of each architecture's binaries are called.
package arch

import (
	"runtime"
	"slices"
)

// Known are the architectures raptiformica is built for: amd64 and arm64 by
// every `make test`, 386 and arm (ARMv7, GOARM=7) by `make package
// ARCHS=…` when asked for.
var Known = []string{"amd64", "arm64", "386", "arm"}

// Valid reports whether a is one of Known.
func Valid(a string) bool { return slices.Contains(Known, a) }

// Native is this process's architecture.
func Native() string { return runtime.GOARCH }

// Dir is the folder that holds the binaries built for a: linux-arm64.
func Dir(a string) string { return "linux-" + a }

// uname maps what `uname -m` prints to Go's name. armv6l and older are left
// out: a GOARM=7 binary does not run there.
var uname = map[string]string{
	"x86_64": "amd64", "amd64": "amd64",
	"aarch64": "arm64", "arm64": "arm64", "aarch64_be": "",
	"armv7l": "arm", "armv8l": "arm",
	"i686": "386", "i586": "", "i386": "386",
	"riscv64": "riscv64", "ppc64le": "ppc64le", "s390x": "s390x",
}

// FromUname is Go's name for the architecture `uname -m` printed as m, or
// "" when Go has none that runs there.
func FromUname(m string) string { return uname[m] }
