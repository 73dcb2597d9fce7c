package main

import (
	"os/exec"
	"testing"
)

// needTool returns the path of a program a test needs. `make test` installs
// every one of them (scripts/testdeps.sh), so a missing one fails the test,
// saying where it comes from; with -short the test is skipped instead.
func needTool(t *testing.T, name, from string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if testing.Short() {
		t.Skipf("%s not found on PATH (%s); skipped with -short", name, from)
	}
	t.Fatalf("%s not found on PATH: run the tests with make test, which provides it (%s)", name, from)
	return ""
}
