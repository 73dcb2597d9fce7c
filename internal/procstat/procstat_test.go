package procstat

import (
	"os"
	"testing"
)

// TestParseCommandWithParentheses: a command may hold spaces and
// parentheses; the fields are read after the last closing one.
func TestParseCommandWithParentheses(t *testing.T) {
	line := "4242 (a) b (c) Z 1 4242 4242 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 0 0 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"
	s, err := Parse(line)
	if err != nil {
		t.Fatal(err)
	}
	if s.State != 'Z' || !s.Exited() || s.PPID != 1 || s.PGRP != 4242 || s.StartTime != "987654" {
		t.Errorf("parsed %+v", s)
	}
	for _, bad := range []string{"", "4242 no command Z 1", "4242 (short) S 1 2"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) took it", bad)
		}
	}
}

// TestOfThisProcess: this process's own stat reads as running, in its own
// process group's terms.
func TestOfThisProcess(t *testing.T) {
	s, err := Of(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if s.Exited() || s.PPID != os.Getppid() || s.StartTime == "" {
		t.Errorf("this process: %+v", s)
	}
}
