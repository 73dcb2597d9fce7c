// Package procstat reads the fields of /proc/<pid>/stat the backends need to
// tell their own processes from others: the state (a zombie has exited),
// the process group, and the start time (PIDs are reused; a start time is
// not).
package procstat

import (
	"fmt"
	"os"
	"strings"
)

// Stat is what one line of /proc/<pid>/stat (or of a thread's,
// /proc/<pid>/task/<tid>/stat) says.
type Stat struct {
	// State is field 3: R, S, D, Z (a zombie: exited, not yet reaped), X
	// (dead), and so on.
	State byte
	// PPID and PGRP are fields 4 and 5.
	PPID, PGRP int
	// StartTime is field 22: when it started, in clock ticks after boot.
	StartTime string
}

// Exited reports whether the process has ended: a zombie or dead.
func (s Stat) Exited() bool { return s.State == 'Z' || s.State == 'X' }

// Of reads process pid's stat.
func Of(pid int) (Stat, error) { return read(fmt.Sprintf("/proc/%d/stat", pid)) }

// Thread reads the stat of thread tid of process pid.
func Thread(pid int, tid string) (Stat, error) {
	return read(fmt.Sprintf("/proc/%d/task/%s/stat", pid, tid))
}

func read(path string) (Stat, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return Stat{}, err
	}
	return Parse(string(raw))
}

// Parse reads a stat line. The command (field 2) is in parentheses and may
// hold spaces and parentheses itself: the fields are counted from the last
// closing one.
func Parse(line string) (Stat, error) {
	i := strings.LastIndexByte(line, ')')
	if i < 0 {
		return Stat{}, fmt.Errorf("a stat line without its command: %.40q", line)
	}
	f := strings.Fields(line[i+1:])
	// After the command: field 3 onwards; the start time is field 22.
	if len(f) < 20 || len(f[0]) != 1 {
		return Stat{}, fmt.Errorf("a stat line of %d fields", len(f)+2)
	}
	s := Stat{State: f[0][0], StartTime: f[19]}
	if _, err := fmt.Sscan(f[1], &s.PPID); err != nil {
		return Stat{}, fmt.Errorf("a stat line's parent: %w", err)
	}
	if _, err := fmt.Sscan(f[2], &s.PGRP); err != nil {
		return Stat{}, fmt.Errorf("a stat line's process group: %w", err)
	}
	return s, nil
}
