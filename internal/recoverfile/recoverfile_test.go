package recoverfile

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A recovery request holds for TTL; one expired, or
// unreadable, is removed rather than acted on.
func TestHostileRecoveryRequestExpires(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	if err := Write(dir, now, "test"); err != nil {
		t.Fatal(err)
	}
	if req, ok, _ := Pending(dir, now.Add(time.Minute)); !ok || req.Nonce == "" || req.Why != "test" {
		t.Fatalf("a fresh request: %+v, %v", req, ok)
	}
	if _, ok, dropped := Pending(dir, now.Add(TTL)); ok || dropped == "" {
		t.Errorf("an expired request held (dropped %q)", dropped)
	}
	if _, err := os.Stat(filepath.Join(dir, Name)); err == nil {
		t.Error("the expired request is still there")
	}
	// What an older version wrote: a line, no expiry.
	if err := os.WriteFile(filepath.Join(dir, Name), []byte("2026-11-30T12:00:00Z by raptiformica recover\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, ok, dropped := Pending(dir, now); ok || dropped == "" {
		t.Errorf("an unreadable request held")
	}
}
