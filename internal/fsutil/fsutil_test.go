package fsutil

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestLockDirWaitsUntilItsDeadline: a second taker of a folder's lock waits
// while the first holds it, fails by its deadline instead of hanging, and
// gets the lock once it is released.
func TestLockDirWaitsUntilItsDeadline(t *testing.T) {
	dir := t.TempDir()
	unlock, err := LockDir(context.Background(), dir, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := LockDir(ctx, dir, 0o600); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a second taker while the lock is held: %v, want its deadline", err)
	}
	got := make(chan error, 1)
	go func() {
		u, err := LockDir(context.Background(), dir, 0o600)
		if err == nil {
			u()
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("a taker got the lock while it was held: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	unlock()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the lock released was not taken")
	}
}
