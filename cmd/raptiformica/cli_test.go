package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestCLI(t *testing.T) {
	cases := []struct {
		name     string
		args     []string
		code     int
		out, err string
	}{
		{name: "no arguments prints usage", args: nil, code: 2, err: "Usage:"},
		{name: "unknown command", args: []string{"frobnicate"}, code: 2, err: `unknown command "frobnicate"`},
		{name: "version", args: []string{"version"}, code: 0, out: "raptiformica dev (consul 1.22.0)"},
		{name: "validate the example", args: []string{"platform", "validate", "../../deploy/examples/platform.hcl"}, code: 0, out: "valid (2 machine types, 3 Consul servers)"},
		{name: "validate the docker example", args: []string{"platform", "validate", "../../deploy/examples/docker.hcl"}, code: 0, out: "valid (2 machine types, 3 Consul servers)"},
		{name: "validate the JSON example", args: []string{"platform", "validate", "../../rules/testdata/good.json"}, code: 0, out: "valid"},
		{name: "validate a missing file", args: []string{"platform", "validate", "nope.hcl"}, code: 1, err: "nope.hcl: no such file"},
		{name: "platform without subcommand", args: []string{"platform"}, code: 2, err: "platform validate|apply|get"},
		{name: "destroy without id", args: []string{"destroy", "--dir", "/nonexistent"}, code: 2, err: "destroy MACHINE_ID"},
		{name: "members of a folder with no cluster", args: []string{"members", "--dir", "/nonexistent"}, code: 1, err: "no running machine in /nonexistent"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := runWith(tc.args, &out, &errOut)
			if code != tc.code {
				t.Errorf("exit code: got %d want %d (stderr %q)", code, tc.code, errOut.String())
			}
			if !strings.Contains(out.String(), tc.out) {
				t.Errorf("stdout: got %q want it to contain %q", out.String(), tc.out)
			}
			if !strings.Contains(errOut.String(), tc.err) {
				t.Errorf("stderr: got %q want it to contain %q", errOut.String(), tc.err)
			}
		})
	}
}
