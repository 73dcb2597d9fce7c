package main

import (
	"os"
	"os/exec"
	"testing"
)

// needTool returns the path of a program a test needs. `make test` puts
// every one of them on PATH, so under CI a missing tool fails the test;
// elsewhere (a bare `go test`) the test is skipped and says where it comes
// from.
func needTool(t *testing.T, name, from string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s not found on PATH: make test provides it (%s)", name, from)
	}
	t.Skipf("%s not found on PATH: run the tests with make test, which provides it (%s)", name, from)
	return ""
}
