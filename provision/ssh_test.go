package provision

import (
	"os/exec"
	"strings"
	"testing"
)

func TestParseHost(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Host
		err  string
	}{
		{in: "192.0.2.10", want: Host{User: "root", Addr: "192.0.2.10", Port: 22}},
		{in: "deploy@nas.home:2222", want: Host{User: "deploy", Addr: "nas.home", Port: 2222}},
		{in: "[2001:db8::1]:2200", want: Host{User: "root", Addr: "2001:db8::1", Port: 2200}},
		{in: "2001:db8::1", want: Host{User: "root", Addr: "2001:db8::1", Port: 22}},
		{in: "a@b@c", want: Host{User: "a@b", Addr: "c", Port: 22}},
		{in: "@host", err: `empty user`},
		{in: "host:0", err: `port "0" is not a port number`},
		{in: "host:ssh", err: `port "ssh" is not a port number`},
		{in: "root@", err: `no host name`},
	} {
		got, err := ParseHost(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseHost(%q): got %v, want error with %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseHost(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

// ShellQuote's words reach the program as they are, whatever they hold:
// checked by the shell that will parse them.
func TestShellQuote(t *testing.T) {
	args := []string{"printf", "%s|", "it's", "$HOME", "`id`", "a b", "", "\\", "*", "\n"}
	out, err := exec.Command("/bin/sh", "-c", ShellQuote(args)).Output()
	if err != nil {
		t.Fatal(err)
	}
	want := "it's|$HOME|`id`|a b||\\|*|\n|"
	if string(out) != want {
		t.Errorf("through the shell: got %q want %q", out, want)
	}
}
