package local

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/raptiformica/raptiformica/backends"
)

var _ backends.SelectiveWatcher = (*Backend)(nil)

// watchRescan is how often Watch looks for machine folders it does not
// watch yet (a spawn, an agent restarted by hand), and the longest it takes
// to notice that ctx ended.
const watchRescan = time.Second

// watchTook, when set (by tests), is told each machine Watch holds a pidfd
// of, so that a test kills a machine only once it is watched.
var watchTook func(machineID string)

// watched is one running machine Watch holds a pidfd of.
type watched struct {
	id  string
	pid int
	fd  int
}

// Watch reports each machine whose agent process ends. It holds a pidfd
// per running machine, so the kernel says when a process exits: nothing
// polls /proc, and a PID reused by another process cannot hide an exit.
// New folders are picked up within watchRescan; a machine started and
// killed within that time is not reported (List still sees it).
func (b *Backend) Watch(ctx context.Context, stopped func(machineID string)) error {
	return b.WatchOnly(ctx, nil, stopped)
}

// WatchOnly is Watch over the machines want keeps (nil: all of them). A
// folder want passed over is not read again while the watch lasts: a
// machine's ID and maker never change.
func (b *Backend) WatchOnly(ctx context.Context, want func(backends.Instance) bool, stopped func(machineID string)) error {
	held := map[string]watched{} // by machine folder
	passed := map[string]bool{}  // folders want passed over
	defer func() {
		for _, w := range held {
			unix.Close(w.fd)
		}
	}()
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := b.watchNew(held, passed, want); err != nil {
			return err
		}
		fds := make([]unix.PollFd, 0, len(held))
		dirs := make([]string, 0, len(held))
		for mdir, w := range held {
			fds = append(fds, unix.PollFd{Fd: int32(w.fd), Events: unix.POLLIN})
			dirs = append(dirs, mdir)
		}
		n, err := unix.Poll(fds, int(watchRescan/time.Millisecond))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("local backend: watch machines: %w", err)
		}
		for i := 0; n > 0 && i < len(fds); i++ {
			if fds[i].Revents == 0 {
				continue
			}
			w := held[dirs[i]]
			unix.Close(w.fd)
			delete(held, dirs[i])
			stopped(w.id)
		}
	}
}

// watchNew opens a pidfd for every running machine want keeps that is not
// held yet, and drops the folders that are gone.
func (b *Backend) watchNew(held map[string]watched, passed map[string]bool, want func(backends.Instance) bool) error {
	ents, err := os.ReadDir(b.dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("local backend: %w", err)
	}
	present := make(map[string]bool, len(ents))
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		mdir := filepath.Join(b.dir, e.Name())
		present[mdir] = true
		if _, ok := held[mdir]; ok || passed[mdir] {
			continue
		}
		pid, alive := agentPID(mdir)
		if !alive {
			continue
		}
		node, err := readNode(mdir)
		if err != nil {
			continue
		}
		if want != nil && !want(backends.Instance{MachineID: node.MachineID, MachineType: node.MachineType, MadeBy: node.MadeBy}) {
			passed[mdir] = true
			continue
		}
		fd, err := unix.PidfdOpen(pid, 0)
		if errors.Is(err, unix.ESRCH) {
			continue // ended meanwhile: List sees it stopped
		}
		if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) {
			// A kernel before 5.3, or a seccomp profile that
			// refuses it: no watch, the lists alone.
			return fmt.Errorf("local backend: pidfd_open: %w (%w)", backends.ErrCannotWatch, err)
		}
		if err != nil {
			return fmt.Errorf("local backend: watch the agent of %s (pid %d): %w", node.MachineID, pid, err)
		}
		// The pidfd names whatever process had the PID when it was
		// opened: only if it is still the machine's agent now is it
		// the agent's.
		if again, alive := agentPID(mdir); !alive || again != pid {
			unix.Close(fd)
			continue
		}
		held[mdir] = watched{id: node.MachineID, pid: pid, fd: fd}
		if watchTook != nil {
			watchTook(node.MachineID)
		}
	}
	for mdir, w := range held {
		if !present[mdir] {
			unix.Close(w.fd)
			delete(held, mdir)
		}
	}
	for mdir := range passed {
		if !present[mdir] {
			delete(passed, mdir)
		}
	}
	return nil
}
