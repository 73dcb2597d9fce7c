package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"strings"
	"testing"

	"github.com/raptiformica/raptiformica/internal/probe"
)

func TestCLI(t *testing.T) {
	const example = "../../deploy/examples/platform.hcl"
	cases := []struct {
		name     string
		args     []string
		code     int
		out, err []string // each must appear
	}{
		{name: "no arguments prints usage", args: nil, code: 2, err: []string{"Usage:", "Cluster:", "spawn"}},
		{name: "unknown command", args: []string{"frobnicate"}, code: 2, err: []string{`unknown command "frobnicate"`}},
		{name: "misspelt command", args: []string{"stauts"}, code: 2, err: []string{"did you mean status?"}},
		{name: "help", args: []string{"help"}, code: 0, out: []string{"Usage:", "Cluster:", "platform", "Exit codes"}},
		{name: "--help", args: []string{"--help"}, code: 0, out: []string{"Usage:", "Machines:", "spawn"}},
		{name: "version", args: []string{"version"}, code: 0, out: []string{"raptiformica dev (consul 1.22.0)\n"}},
		{name: "--version", args: []string{"--version"}, code: 0, out: []string{"raptiformica dev (consul 1.22.0)\n"}},
		{name: "validate the example", args: []string{"platform", "validate", example}, code: 0, out: []string{"valid (2 machine types, 3 Consul servers)"}},
		{name: "validate the docker example", args: []string{"platform", "validate", "../../deploy/examples/docker.hcl"}, code: 0, out: []string{"valid (2 machine types, 3 Consul servers)"}},
		{name: "validate the JSON example", args: []string{"platform", "validate", "../../rules/testdata/good.json"}, code: 0, out: []string{"valid"}},
		{name: "validate a missing file", args: []string{"platform", "validate", "nope.hcl"}, code: 1, err: []string{"raptiformica platform validate: ", "nope.hcl: no such file"}},
		{name: "a flag after the argument", args: []string{"platform", "validate", example, "--json"}, code: 0, out: []string{`"valid": true`}},
		{name: "a Go-style single-dash flag", args: []string{"platform", "validate", "-json", example}, code: 0, out: []string{`"valid": true`}},
		{name: "agent -config, as units and backends start it", args: []string{"agent", "-config", "/nonexistent/agent.json"}, code: 1, err: []string{"raptiformica agent: ", "/nonexistent/agent.json"}},
		{name: "platform without subcommand", args: []string{"platform"}, code: 2, err: []string{"platform validate|apply|get", "Available Commands:"}},
		{name: "platform --help lists its subcommands", args: []string{"platform", "--help"}, code: 0, out: []string{"validate", "apply", "get"}},
		{name: "unknown platform subcommand", args: []string{"platform", "frobnicate"}, code: 2, err: []string{`unknown command "frobnicate"`}},
		{name: "-h on a subcommand", args: []string{"spawn", "-h"}, code: 0, out: []string{"--type", "raptiformica spawn --type worker"}},
		{name: "-h on a nested subcommand", args: []string{"platform", "apply", "-h"}, code: 0, out: []string{"raptiformica platform apply FILE", "--dir"}},
		{name: "unknown flag", args: []string{"members", "--frobnicate"}, code: 2, err: []string{"unknown flag: --frobnicate"}},
		{name: "flag without its value", args: []string{"spawn", "--type"}, code: 2, err: []string{"flag needs an argument: --type"}},
		{name: "destroy without id", args: []string{"destroy", "--dir", "/nonexistent"}, code: 2, err: []string{"missing argument", "destroy MACHINE_ID"}},
		{name: "an extra argument", args: []string{"members", "extra", "--dir", "/nonexistent"}, code: 2, err: []string{`unexpected argument "extra"`}},
		{name: "members of a folder with no cluster", args: []string{"members", "--dir", "/nonexistent"}, code: 1, err: []string{"no running machine in /nonexistent"}},
		{name: "rotate without what", args: []string{"rotate"}, code: 2, err: []string{"rotate gossip|mesh", "Available Commands:"}},
		{name: "rotate --help lists what it rotates", args: []string{"rotate", "--help"}, code: 0, out: []string{"gossip", "mesh"}},
		{name: "rotate a folder with no cluster", args: []string{"rotate", "gossip", "--dir", "/nonexistent"}, code: 1, err: []string{"raptiformica rotate gossip: ", "no running machine in /nonexistent"}},
		{name: "completion powershell", args: []string{"completion", "powershell"}, code: 0, out: []string{"Register-ArgumentCompleter"}},
		{name: "completion of an unknown shell", args: []string{"completion", "tcsh"}, code: 2, err: []string{`no completion for shell "tcsh"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := runWith(tc.args, &out, &errOut)
			if code != tc.code {
				t.Errorf("exit code: got %d want %d (stderr %q)", code, tc.code, errOut.String())
			}
			for _, want := range tc.out {
				if !strings.Contains(out.String(), want) {
					t.Errorf("stdout: got %q want it to contain %q", out.String(), want)
				}
			}
			for _, want := range tc.err {
				if !strings.Contains(errOut.String(), want) {
					t.Errorf("stderr: got %q want it to contain %q", errOut.String(), want)
				}
			}
		})
	}
}

// status with its Consul unreachable says so and fails; it once exited 0,
// taking the refused connection for a rejected description.
func TestHostileStatusUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	t.Setenv("CONSUL_HTTP_ADDR", addr)
	var out, errOut bytes.Buffer
	if code := runWith([]string{"status"}, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "cannot read the cluster's Consul") {
		t.Errorf("status with %s closed: exit %d, stdout %q, stderr %q; want 1 and why", addr, code, out.String(), errOut.String())
	}
}

// With --json a failure is a JSON object on stdout, as the README promises
// scripts: `members --json` once printed nothing there, only a line on
// stderr, and `jq` read an empty input.
func TestHostileJSONFailures(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string // in the error's text
	}{
		{"members of a folder with no cluster", []string{"members", "--json", "--dir", "/nonexistent"}, 1, "no running machine in /nonexistent"},
		{"status of a folder with no cluster", []string{"status", "--dir", "/nonexistent", "--json"}, 1, "no running machine in /nonexistent"},
		{"token list, single-dash", []string{"token", "list", "-json", "--dir", "/nonexistent"}, 1, "no running machine in /nonexistent"},
		{"version with an extra argument", []string{"version", "--json", "extra"}, 2, `unexpected argument "extra"`},
		{"platform apply of a missing file", []string{"platform", "apply", "nope.hcl", "--json"}, 1, "nope.hcl"},
		{"spawn without a cluster", []string{"spawn", "--type", "worker", "--json", "--dir", "/nonexistent"}, 1, "no running machine in /nonexistent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := runWith(tc.args, &out, &errOut)
			var got struct {
				Error   string `json:"error"`
				Command string `json:"command"`
			}
			if err := json.Unmarshal(out.Bytes(), &got); err != nil || code != tc.code || !strings.Contains(got.Error, tc.want) || got.Command == "" {
				t.Errorf("got exit %d, stdout %q (%v), stderr %q; want %d and {\"error\": …%q…, \"command\": …}", code, out.String(), err, errOut.String(), tc.code, tc.want)
			}
			if tc.code == 1 && errOut.Len() > 0 {
				t.Errorf("stderr: got %q, want nothing: the failure is on stdout", errOut.String())
			}
		})
	}
}

// A probe's counts are checked before it measures: --rounds -1 once
// panicked (a slice of negative capacity) against a live prober.
func TestHostileProbeFlags(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = probe.Serve(ctx, ln) }()
	addr := ln.Addr().String()
	for _, tc := range []struct{ flag, value string }{
		{"--rounds", "-1"}, {"--rounds", "0"}, {"--for", "-1s"}, {"--for", "0s"},
	} {
		t.Run(tc.flag+"="+tc.value, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := runWith([]string{"probe", addr, tc.flag, tc.value}, &out, &errOut)
			if code != 2 || !strings.Contains(errOut.String(), tc.flag) {
				t.Errorf("got exit %d, stderr %q; want 2 and a message naming %s", code, errOut.String(), tc.flag)
			}
		})
	}
}
