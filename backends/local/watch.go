package local

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/raptiformica/raptiformica/backends"
)

var _ backends.SelectiveWatcher = (*Backend)(nil)

// watchRescan is how often Watch looks for machine folders it does not
// watch yet that no spawn of this process told it of (a machine spawned or
// an agent restarted by another process). A rescan a second was one of the
// few wake-ups of an idle agent that hosts machines.
const watchRescan = 5 * time.Second

// spawns tells the watches of a machines folder in this process that a
// machine was started in it, so that they take it at once rather than at
// their next rescan.
var spawns = &folderNews{waiting: map[string]chan struct{}{}}

// folderNews is a broadcast per folder: next returns a channel that the
// next tell of that folder closes.
type folderNews struct {
	mu      sync.Mutex
	waiting map[string]chan struct{} // one per folder watched; bounded by them
}

func (n *folderNews) next(dir string) <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	ch, ok := n.waiting[dir]
	if !ok {
		ch = make(chan struct{})
		n.waiting[dir] = ch
	}
	return ch
}

func (n *folderNews) tell(dir string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if ch, ok := n.waiting[dir]; ok {
		close(ch)
		delete(n.waiting, dir)
	}
}

// watchTook, when set (by tests), is told each machine Watch holds a pidfd
// of, so that a test kills a machine only once it is watched.
var watchTook func(machineID string)

// watched is one running machine Watch holds a pidfd of.
type watched struct {
	id   string
	pid  int
	file *os.File // the pidfd, in Go's network poller
}

// ended is what a machine's waiter says: its agent exited (err nil), or
// its pidfd cannot be waited on. file names the pidfd it waited on: a
// waiter let go of (its folder gone, perhaps made again since) still
// reports, and only the watch of the same file may act on it.
type ended struct {
	mdir string
	file *os.File
	err  error
}

// Watch reports each machine whose agent process ends. It holds a pidfd
// per running machine, so the kernel says when a process exits: nothing
// polls /proc, and a PID reused by another process cannot hide an exit.
// A machine this process starts is picked up at once, others within the
// backend's rescan; a machine started elsewhere and killed within that
// time is not reported (List still sees it).
func (b *Backend) Watch(ctx context.Context, stopped func(machineID string)) error {
	return b.WatchOnly(ctx, nil, stopped)
}

// WatchOnly is Watch over the machines want keeps (nil: all of them). A
// folder want passed over is not read again while the watch lasts: a
// machine's ID and maker never change.
//
// The pidfds wait in Go's network poller, not in a poll(2) of its own: a
// goroutine blocked in a system call keeps the runtime's monitor thread
// awake until it takes the call's processor back (10 ms of wake-ups), and
// a poll renewed every second cost every idle agent tens of wake-ups a
// second.
func (b *Backend) WatchOnly(ctx context.Context, want func(backends.Instance) bool, stopped func(machineID string)) error {
	held := map[string]watched{} // by machine folder
	passed := map[string]bool{}  // folders want passed over
	ends := make(chan ended)
	wctx, cancel := context.WithCancel(ctx)
	defer func() {
		cancel()
		for _, w := range held {
			w.file.Close() // ends its waiter
		}
	}()
	tick := time.NewTicker(b.rescan)
	defer tick.Stop()
	for {
		// Asked before the scan: a start during it is news after it.
		started := spawns.next(b.dir)
		if err := b.watchNew(wctx, held, passed, want, ends); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-started:
		case e := <-ends:
			w, ok := held[e.mdir]
			if !ok || w.file != e.file {
				continue // let go of meanwhile
			}
			w.file.Close()
			delete(held, e.mdir)
			if e.err != nil {
				return fmt.Errorf("local backend: wait for the agent of %s (pid %d): %w", w.id, w.pid, e.err)
			}
			stopped(w.id)
		case <-tick.C:
		}
	}
}

// watchNew opens a pidfd for every running machine want keeps that is not
// held yet, starts its waiter, and drops the folders that are gone.
func (b *Backend) watchNew(ctx context.Context, held map[string]watched, passed map[string]bool, want func(backends.Instance) bool, ends chan<- ended) error {
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
		fd, err := openPidfd(pid)
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
		// A non-blocking descriptor goes to the network poller.
		file := os.NewFile(uintptr(fd), "pidfd of "+node.MachineID)
		rc, err := file.SyscallConn()
		if err != nil {
			file.Close()
			return fmt.Errorf("local backend: watch the agent of %s: %w", node.MachineID, err)
		}
		held[mdir] = watched{id: node.MachineID, pid: pid, file: file}
		go func() {
			// A pidfd is readable once its process has exited; it
			// has nothing to read, so the callback only looks. The
			// first call comes before any wait.
			// A file closed by the watch ends the wait with an
			// error too; the watch knows it let go of it.
			err := rc.Read(func(fd uintptr) bool {
				pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
				n, _ := unix.Poll(pfd, 0)
				return n > 0
			})
			select {
			case ends <- ended{mdir: mdir, file: file, err: err}:
			case <-ctx.Done():
			}
		}()
		if watchTook != nil {
			watchTook(node.MachineID)
		}
	}
	for mdir, w := range held {
		if !present[mdir] {
			w.file.Close()
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

// openPidfd opens a non-blocking pidfd of pid: with the flag where the
// kernel has it (5.10), set afterwards where it does not.
func openPidfd(pid int) (int, error) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if !errors.Is(err, unix.EINVAL) {
		return fd, err
	}
	if fd, err = unix.PidfdOpen(pid, 0); err != nil {
		return -1, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}
