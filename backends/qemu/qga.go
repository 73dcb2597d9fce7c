package qemu

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"time"
)

// GuestResult is what a command run in a VM by its guest agent gave.
type GuestResult struct {
	ExitCode int
	Stdout   []byte
	Stderr   []byte
}

// guestOutputCap bounds what is read of a command's output: the guest
// agent itself keeps at most 16 MiB; what a caller here wants is a line.
const guestOutputCap = 1 << 20

// GuestExec runs argv in the VM of machineID through the QEMU guest agent
// inside (qemu-guest-agent, in the image), as root there, and waits for it
// until ctx ends. Only root on this host reaches the agent's socket (the
// VM folder is 0700): whoever can run it could read the VM's disk anyway.
// It is how tests, and an operator, look inside a VM without SSH keys.
func (b *Backend) GuestExec(ctx context.Context, machineID string, argv ...string) (GuestResult, error) {
	if err := validID(machineID); err != nil {
		return GuestResult{}, err
	}
	return GuestExecIn(ctx, filepath.Join(b.dir, machineID), argv...)
}

// GuestExecIn is GuestExec for the VM whose QEMU runs in vmDir, with its
// guest agent's socket at qga.sock there (a VM made by hand, too).
func GuestExecIn(ctx context.Context, vmDir string, argv ...string) (GuestResult, error) {
	if len(argv) == 0 {
		return GuestResult{}, fmt.Errorf("guest exec: no command")
	}
	conn, err := dialUnix(ctx, vmDir, qgaSocket)
	if err != nil {
		return GuestResult{}, fmt.Errorf("guest agent: %w", err)
	}
	defer conn.Close()
	// Room for a status carrying guestOutputCap of output on each of
	// stdout and stderr, base64 (4/3) and JSON-quoted.
	q := &qmp{conn: conn, r: bufio.NewReaderSize(conn, 4096), lineCap: 3 * guestOutputCap}
	// The guest agent has no greeting, and a reply to an earlier client's
	// command may still be queued: a sync with a fresh ID skips past it.
	id := rand.Int64N(1 << 31)
	if err := q.deadline(ctx); err != nil {
		return GuestResult{}, err
	}
	if _, err := fmt.Fprintf(conn, `{"execute":"guest-sync","arguments":{"id":%d}}`+"\n", id); err != nil {
		return GuestResult{}, fmt.Errorf("guest agent: %w", err)
	}
	for {
		var reply struct {
			Return json.RawMessage `json:"return"`
		}
		if err := q.read(&reply); err != nil {
			return GuestResult{}, fmt.Errorf("guest agent sync: %w", err)
		}
		if string(reply.Return) == fmt.Sprint(id) {
			break
		}
	}
	args := map[string]any{"path": argv[0], "arg": argv[1:], "capture-output": true}
	raw, err := q.execute(ctx, "guest-exec", args)
	if err != nil {
		return GuestResult{}, err
	}
	var started struct {
		PID int `json:"pid"`
	}
	if err := json.Unmarshal(raw, &started); err != nil {
		return GuestResult{}, fmt.Errorf("guest-exec: %w", err)
	}
	for {
		raw, err := q.execute(ctx, "guest-exec-status", map[string]any{"pid": started.PID})
		if err != nil {
			return GuestResult{}, err
		}
		var st struct {
			Exited   bool   `json:"exited"`
			ExitCode int    `json:"exitcode"`
			Out      string `json:"out-data"`
			Err      string `json:"err-data"`
		}
		if err := json.Unmarshal(raw, &st); err != nil {
			return GuestResult{}, fmt.Errorf("guest-exec-status: %w", err)
		}
		if st.Exited {
			res := GuestResult{ExitCode: st.ExitCode}
			res.Stdout, _ = base64.StdEncoding.DecodeString(capped(st.Out))
			res.Stderr, _ = base64.StdEncoding.DecodeString(capped(st.Err))
			return res, nil
		}
		select {
		case <-ctx.Done():
			return GuestResult{}, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// capped cuts base64 text to what decodes to guestOutputCap bytes.
func capped(s string) string {
	if n := guestOutputCap / 3 * 4; len(s) > n {
		return s[:n]
	}
	return s
}
