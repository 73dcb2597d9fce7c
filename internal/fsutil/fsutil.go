// Package fsutil holds the small file-system helpers the agent and the CLI
// share.
package fsutil

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// WriteFileAtomic replaces name with data so that a reader sees either the old
// content or the new one, never a mix: the data is written to a temporary file
// in the same folder, synced, and renamed over name, and the folder synced.
func WriteFileAtomic(name string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create folder for %s: %w", name, err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(name)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // a no-op once renamed
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := os.Rename(tmp, name); err != nil {
		return fmt.Errorf("replace %s: %w", name, err)
	}
	return SyncDir(dir)
}

// SyncDir makes a folder's entries durable: a file renamed or linked into
// it survives a crash only once its folder is synced too.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// LockDir takes the exclusive lock of folder dir (flock of its .lock file,
// made with perm), waiting for it until ctx ends: two processes that
// allocate in one folder (machines' addresses, a probe's answer) take turns,
// and a holder that hangs makes the next one fail by its deadline instead
// of hanging too. The lock goes with the process, so a holder that dies
// frees it. It returns the function that releases it.
func LockDir(ctx context.Context, dir string, perm os.FileMode) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, perm)
	if err != nil {
		return nil, err
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() {
				_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
				f.Close()
			}, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", dir, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("lock %s: another process holds it: %w", dir, ctx.Err())
		case <-time.After(lockPoll):
		}
	}
}

// lockPoll is how often LockDir tries again while another process holds
// the lock: allocations under it take milliseconds.
const lockPoll = 20 * time.Millisecond
